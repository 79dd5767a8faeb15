package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config configures the s3 backend (storage.s3.* in the configuration).
type S3Config struct {
	// Endpoint is the store's URL, e.g. "http://127.0.0.1:7070" or
	// "https://minio.example:9000"; empty means AWS S3.
	Endpoint string
	// Bucket must exist; the backend never creates it.
	Bucket string
	// Region, e.g. "us-east-1"; empty lets the client discover it.
	Region string
	// Prefix is prepended to every key ("cedana/" → s3://bucket/cedana/<key>).
	Prefix string
	// PathStyle addresses the bucket as endpoint/bucket instead of bucket.endpoint (most
	// self-hosted stores need it).
	PathStyle bool
	// PartSize is the multipart part size in bytes (default 16 MiB, minimum 5 MiB).
	PartSize int64
	// Parallel is the number of parts uploaded at once (default 4).
	Parallel int
	// AccessKey and SecretKey override the usual credential sources; leave them empty to
	// take credentials the way AWS tools do: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
	// (and AWS_SESSION_TOKEN), then the shared credentials file (AWS_SHARED_CREDENTIALS_FILE
	// or ~/.aws/credentials, profile AWS_PROFILE), then, for AWS only, the instance role.
	AccessKey, SecretKey string
}

const (
	defaultPartSize = 16 << 20
	minPartSize     = 5 << 20
	// partTimeout bounds one part's upload (16 MiB at ≥ 140 KB/s).
	partTimeout = 2 * time.Minute
)

// S3 is a backend on an S3-compatible object store. Objects larger than one part are
// written as a multipart upload, streamed part by part (Parallel parts in flight, no copy on
// disk); S3 makes the object visible only when CompleteMultipartUpload succeeds, and Abort
// (or a failed Commit) aborts the upload. A killed writer leaves an incomplete multipart
// upload that List never shows; a bucket lifecycle rule "abort incomplete multipart
// uploads after N days" reclaims its space. Reads are ranged GETs.
type S3 struct {
	cfg    S3Config
	core   *minio.Core
	prefix string
	name   string
}

var _ Backend = (*S3)(nil)

// NewS3 connects to the store and checks that the bucket exists and the credentials are
// accepted, so a misconfiguration is reported before the first checkpoint.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	s := &S3{cfg: cfg}
	s.prefix = strings.Trim(cfg.Prefix, "/")
	if s.prefix != "" {
		s.prefix += "/"
	}
	s.name = "s3://" + cfg.Bucket + "/" + s.prefix
	if cfg.Endpoint != "" {
		s.name += " at " + redactURL(cfg.Endpoint)
	}
	if cfg.Bucket == "" {
		return nil, s.err("connect", "", errors.New("no bucket configured"), "set storage.s3.bucket")
	}
	if s.cfg.PartSize == 0 {
		s.cfg.PartSize = defaultPartSize
	}
	if s.cfg.PartSize < minPartSize {
		return nil, s.err("connect", "", fmt.Errorf("part size %d is below S3's minimum of 5 MiB", s.cfg.PartSize), "raise storage.s3.part_size")
	}
	if s.cfg.Parallel <= 0 {
		s.cfg.Parallel = 4
	}
	host, secure := "s3.amazonaws.com", true
	aws := cfg.Endpoint == ""
	if !aws {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, s.err("connect", "", fmt.Errorf("endpoint %q is not an http(s) URL", redactURL(cfg.Endpoint)), "set storage.s3.endpoint to e.g. https://host:9000, or leave it empty for AWS")
		}
		host, secure = u.Host, u.Scheme == "https"
	}
	var creds *credentials.Credentials
	if cfg.AccessKey != "" {
		creds = credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, "")
	} else {
		providers := []credentials.Provider{&credentials.EnvAWS{}, &credentials.FileAWSCredentials{}}
		if aws {
			providers = append(providers, &credentials.IAM{})
		}
		creds = credentials.NewChainCredentials(providers)
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, s.err("connect", "", err, "")
	}
	tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	tr.MaxIdleConnsPerHost = 16
	c, err := minio.NewCore(host, &minio.Options{
		Creds: creds, Secure: secure, Region: cfg.Region, BucketLookup: lookup, Transport: tr,
		// Few retries: an unreachable store should fail in seconds, not minutes.
		MaxRetries: 3,
	})
	if err != nil {
		return nil, s.err("connect", "", err, "check storage.s3.endpoint")
	}
	s.core = c
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ok, err := c.BucketExists(cctx, cfg.Bucket)
	if err != nil {
		return nil, s.classify("connect", "", err)
	}
	if !ok {
		return nil, s.err("connect", "", withKind(ErrNoBucket, fmt.Errorf("bucket %q not found", cfg.Bucket)), "create the bucket or fix storage.s3.bucket")
	}
	return s, nil
}

// Name implements Backend.
func (s *S3) Name() string { return s.name }

func (s *S3) err(op, key string, err error, hint string) error {
	return &Error{Backend: s.name, Op: op, Key: key, Err: err, Hint: hint}
}

const credsHint = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the shared credentials file (~/.aws/credentials, profile AWS_PROFILE), and the bucket's policy"

// classify turns a client error into an *Error with a sentinel and a fix.
func (s *S3) classify(op, key string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if errors.Is(err, context.DeadlineExceeded) {
			return s.err(op, key, withKind(ErrUnreachable, err), "the store did not answer in time; check storage.s3.endpoint and the network")
		}
		return s.err(op, key, err, "")
	}
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case "NoSuchKey", "NoSuchUpload":
		return s.err(op, key, withKind(ErrNotExist, err), "")
	case "NoSuchBucket":
		return s.err(op, key, withKind(ErrNoBucket, err), "create bucket "+s.cfg.Bucket+" or fix storage.s3.bucket")
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AllAccessDisabled":
		return s.err(op, key, withKind(ErrAccess, err), credsHint)
	case "EntityTooLarge", "QuotaExceeded", "XMinioStorageFull", "StorageFull", "InsufficientStorage":
		return s.err(op, key, withKind(ErrNoSpace, err), "free space or raise the quota of the store")
	}
	switch resp.StatusCode {
	case http.StatusForbidden:
		return s.err(op, key, withKind(ErrAccess, err), credsHint)
	case http.StatusInsufficientStorage:
		return s.err(op, key, withKind(ErrNoSpace, err), "free space or raise the quota of the store")
	case http.StatusNotFound:
		if key == "" {
			return s.err(op, key, withKind(ErrNoBucket, err), "create bucket "+s.cfg.Bucket+" or fix storage.s3.bucket")
		}
		return s.err(op, key, withKind(ErrNotExist, err), "")
	}
	var nerr net.Error
	var uerr *url.Error
	if errors.As(err, &nerr) || errors.As(err, &uerr) || strings.Contains(err.Error(), "connection refused") {
		return s.err(op, key, withKind(ErrUnreachable, err), "check storage.s3.endpoint and that the store is running and reachable")
	}
	return s.err(op, key, err, "")
}

func (s *S3) objectName(key string) string { return s.prefix + key }

// Create implements Backend.
func (s *S3) Create(ctx context.Context, key string) (Writer, error) {
	if err := CheckKey(key); err != nil {
		return nil, s.err("create", key, err, "")
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &s3Writer{s: s, ctx: ctx, cancel: cancel, key: key,
		buf: make([]byte, 0, s.cfg.PartSize), sem: make(chan struct{}, s.cfg.Parallel)}
	w.pool.New = func() any { b := make([]byte, 0, s.cfg.PartSize); return &b }
	return w, nil
}

type s3Writer struct {
	s      *S3
	ctx    context.Context
	cancel context.CancelFunc
	key    string
	buf    []byte
	pool   sync.Pool
	sem    chan struct{}

	uploadID string
	partNum  int
	wg       sync.WaitGroup
	mu       sync.Mutex
	parts    []minio.CompletePart
	perr     error
	done     bool
}

func (w *s3Writer) firstErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.perr
}

func (w *s3Writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, w.s.err("write", w.key, ErrClosed, "")
	}
	if err := w.firstErr(); err != nil {
		return 0, err
	}
	n := 0
	for len(p) > 0 {
		room := cap(w.buf) - len(w.buf)
		k := min(room, len(p))
		w.buf = append(w.buf, p[:k]...)
		p, n = p[k:], n+k
		if len(w.buf) == cap(w.buf) {
			if err := w.flushPart(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// flushPart uploads the buffered part in the background (at most Parallel at once).
func (w *s3Writer) flushPart() error {
	if w.uploadID == "" {
		id, err := w.s.core.NewMultipartUpload(w.ctx, w.s.cfg.Bucket, w.s.objectName(w.key), minio.PutObjectOptions{})
		if err != nil {
			return w.s.classify("create", w.key, err)
		}
		w.uploadID = id
	}
	select {
	case w.sem <- struct{}{}:
	case <-w.ctx.Done():
		if err := w.firstErr(); err != nil {
			return err // a failed part cancelled the upload: its error is the cause
		}
		return w.s.classify("write", w.key, w.ctx.Err())
	}
	if err := w.firstErr(); err != nil {
		<-w.sem
		return err
	}
	w.partNum++
	num, data := w.partNum, w.buf
	nb := w.pool.Get().(*[]byte)
	w.buf = (*nb)[:0]
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() { <-w.sem }()
		// A store that stops answering mid-part (a hung server, a black-holed
		// network) must not keep a dump — and the frozen process — waiting
		// for TCP's own timeouts.
		pctx, cancel := context.WithTimeout(w.ctx, partTimeout)
		p, err := w.s.core.PutObjectPart(pctx, w.s.cfg.Bucket, w.s.objectName(w.key), w.uploadID, num,
			bytes.NewReader(data), int64(len(data)), minio.PutObjectPartOptions{})
		cancel()
		data = data[:0]
		w.pool.Put(&data)
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			if w.perr == nil {
				w.perr = w.s.classify("write", w.key, err)
				w.cancel()
			}
			return
		}
		w.parts = append(w.parts, minio.CompletePart{PartNumber: num, ETag: p.ETag})
	}()
	return nil
}

func (w *s3Writer) Commit() error {
	if w.done {
		return w.s.err("commit", w.key, ErrClosed, "")
	}
	err := w.commit()
	if err != nil {
		w.done = false
		_ = w.Abort()
	}
	w.done = true
	w.cancel()
	return err
}

func (w *s3Writer) commit() error {
	w.done = true
	if err := w.firstErr(); err != nil {
		return err
	}
	if w.uploadID == "" {
		// Small object: one PUT, which S3 applies atomically.
		_, err := w.s.core.PutObject(w.ctx, w.s.cfg.Bucket, w.s.objectName(w.key), bytes.NewReader(w.buf),
			int64(len(w.buf)), "", "", minio.PutObjectOptions{})
		if err != nil {
			return w.s.classify("commit", w.key, err)
		}
		return nil
	}
	if len(w.buf) > 0 {
		if err := w.flushPart(); err != nil {
			return err
		}
	}
	w.wg.Wait()
	if err := w.firstErr(); err != nil {
		return err
	}
	sort.Slice(w.parts, func(i, j int) bool { return w.parts[i].PartNumber < w.parts[j].PartNumber })
	if _, err := w.s.core.CompleteMultipartUpload(w.ctx, w.s.cfg.Bucket, w.s.objectName(w.key), w.uploadID,
		w.parts, minio.PutObjectOptions{}); err != nil {
		return w.s.classify("commit", w.key, err)
	}
	w.uploadID = ""
	return nil
}

func (w *s3Writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.cancel()
	w.wg.Wait()
	if w.uploadID == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), 30*time.Second)
	defer cancel()
	if err := w.s.core.AbortMultipartUpload(ctx, w.s.cfg.Bucket, w.s.objectName(w.key), w.uploadID); err != nil {
		return w.s.classify("abort", w.key, err)
	}
	return nil
}

// Open implements Backend.
func (s *S3) Open(ctx context.Context, key string) (Object, error) {
	if err := CheckKey(key); err != nil {
		return nil, s.err("open", key, err, "")
	}
	info, err := s.core.StatObject(ctx, s.cfg.Bucket, s.objectName(key), minio.StatObjectOptions{})
	if err != nil {
		return nil, s.classify("open", key, err)
	}
	// Pin the version that was opened: a concurrent overwrite makes reads fail instead of
	// mixing two objects.
	return &s3Object{s: s, ctx: ctx, key: key, size: info.Size, etag: info.ETag}, nil
}

type s3Object struct {
	s    *S3
	ctx  context.Context
	key  string
	size int64
	etag string
}

func (o *s3Object) get(off, n int64) (io.ReadCloser, error) {
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(off, off+n-1); err != nil {
		return nil, o.s.err("read", o.key, err, "")
	}
	if o.etag != "" {
		if err := opts.SetMatchETag(o.etag); err != nil {
			return nil, o.s.err("read", o.key, err, "")
		}
	}
	r, _, _, err := o.s.core.GetObject(o.ctx, o.s.cfg.Bucket, o.s.objectName(o.key), opts)
	if err != nil {
		return nil, o.s.classify("read", o.key, err)
	}
	return r, nil
}

func (o *s3Object) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), o.size-off)
	if want == 0 {
		return 0, nil
	}
	r, err := o.get(off, want)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	n, err := io.ReadFull(r, p[:want])
	if err != nil {
		return n, o.s.classify("read", o.key, err)
	}
	if int64(n) < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

func (o *s3Object) Size() int64 { return o.size }

func (o *s3Object) Stream(off, n int64) (io.ReadCloser, error) {
	off, n, err := clampRange(off, n, o.size)
	if err != nil {
		return nil, o.s.err("read", o.key, err, "")
	}
	if n == 0 {
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	r, err := o.get(off, n)
	if err != nil {
		return nil, err
	}
	return &s3Stream{o: o, r: r, left: n}, nil
}

// s3Stream checks that the body has exactly the announced length and names the backend
// in read errors.
type s3Stream struct {
	o    *s3Object
	r    io.ReadCloser
	left int64
}

func (s *s3Stream) Read(p []byte) (int, error) {
	if s.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.r.Read(p)
	s.left -= int64(n)
	if err == io.EOF && s.left > 0 {
		return n, s.o.s.err("read", s.o.key, withKind(ErrCorrupt, io.ErrUnexpectedEOF), "the store returned fewer bytes than the object has")
	}
	if err != nil && err != io.EOF {
		return n, s.o.s.classify("read", s.o.key, err)
	}
	return n, err
}

func (s *s3Stream) Close() error { return s.r.Close() }

func (o *s3Object) Close() error { return nil }

// Stat implements Backend.
func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	if err := CheckKey(key); err != nil {
		return Info{}, s.err("stat", key, err, "")
	}
	info, err := s.core.StatObject(ctx, s.cfg.Bucket, s.objectName(key), minio.StatObjectOptions{})
	if err != nil {
		return Info{}, s.classify("stat", key, err)
	}
	return Info{Key: key, Size: info.Size, ModTime: info.LastModified}, nil
}

// List implements Backend.
func (s *S3) List(ctx context.Context, prefix string) ([]Info, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, s.err("list", prefix, err, "")
	}
	var out []Info
	for o := range s.core.ListObjectsIter(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, s.classify("list", "", o.Err)
		}
		key := strings.TrimPrefix(o.Key, s.prefix)
		if CheckKey(key) != nil {
			continue // a reserved or foreign name
		}
		out = append(out, Info{Key: key, Size: o.Size, ModTime: o.LastModified})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete implements Backend.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := CheckKey(key); err != nil {
		return s.err("delete", key, err, "")
	}
	if err := s.core.RemoveObject(ctx, s.cfg.Bucket, s.objectName(key), minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(s.classify("delete", key, err), ErrNotExist) {
			return nil
		}
		return s.classify("delete", key, err)
	}
	return nil
}

// AbortIncomplete aborts the incomplete multipart uploads under the prefix that started
// before olderThan ago (uploads of killed writers) and returns how many it aborted.
func (s *S3) AbortIncomplete(ctx context.Context, olderThan time.Duration) (int, error) {
	n := 0
	for u := range s.core.ListIncompleteUploads(ctx, s.cfg.Bucket, s.prefix, true) {
		if u.Err != nil {
			return n, s.classify("list", "", u.Err)
		}
		if time.Since(u.Initiated) < olderThan {
			continue
		}
		if err := s.core.AbortMultipartUpload(ctx, s.cfg.Bucket, u.Key, u.UploadID); err != nil {
			return n, s.classify("abort", strings.TrimPrefix(u.Key, s.prefix), err)
		}
		n++
	}
	return n, nil
}

// redactURL drops the password of a URL for messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User != nil {
		u.User = url.User("REDACTED") // a user name may be a token
	}
	return u.String()
}
