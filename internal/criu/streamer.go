package criu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// CRIU's image streamer protocol (criu/img-streamer.c, `--stream`), served
// here so that images flow between CRIU and the archive without a copy on
// disk.
//
// CRIU connects once to a unix socket in its images directory
// (streamer-capture.sock for a dump, streamer-serve.sock for a restore).
// For every image it opens it sends an ImgStreamerRequestEntry{filename}
// framed as CRIU frames protobufs in images (a 4-byte little-endian length,
// then the message). On restore the streamer answers with an
// ImgStreamerReplyEntry{exists}, framed the same way. Then, unless the
// image does not exist, CRIU passes one end of a fresh pipe as SCM_RIGHTS
// attached to a single byte, and reads or writes the image through it.
// Requests are serialised on the socket, transfers are not: CRIU writes a
// pagemap and its pages at the same time, and restored children read
// their pages in parallel, so every transfer runs in its own goroutine.
// There is no "done" message: CRIU closes the socket when it exits, and
// only its exit status says whether the operation succeeded.
const (
	captureSocket = "streamer-capture.sock"
	serveSocket   = "streamer-serve.sock"
	// maxRequest bounds a request: a file name, well under a page.
	maxRequest = 4096
)

// streamPipeSize is the capacity asked for every image pipe: fewer wake-ups
// than the 64 KiB default. Capped by fs.pipe-max-size (1 MiB by default);
// a refusal is harmless.
const streamPipeSize = 1 << 20

// imageServer accepts CRIU's connection and runs one handler per image.
type imageServer struct {
	ln      *net.UnixListener
	restore bool
	// handle moves one image through the pipe end fd. For a restore it
	// is only called for images that exist (see exists).
	handle func(name string, pipe *os.File) error
	// exists reports whether a restore can serve the image.
	exists func(name string) bool

	dir     *os.File // the images directory, kept open for dirPath
	dirPath string   // short path of the images directory for CRIU
	sock    string   // the socket's real path

	wg        sync.WaitGroup
	mu        sync.Mutex
	errs      []error
	connected bool
	done      chan struct{}
}

// listenImages creates the streamer socket in dir. A unix socket path
// is limited to 107 bytes and staging directories can be deeper than
// that, so both sides name dir through /proc/<cedana>/fd/<N>, a short
// path to the same directory: the server's dirPath is what CRIU must get
// as its images directory (-D), valid until wait returns.
func listenImages(dir string, restore bool) (*imageServer, error) {
	name := captureSocket
	if restore {
		name = serveSocket
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("image streamer: open images dir: %w", err)
	}
	short := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), d.Fd())
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(short, name), Net: "unix"})
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("image streamer socket in %s: %w", dir, err)
	}
	ln.SetUnlinkOnClose(false) // the path is only valid while d is open
	return &imageServer{ln: ln, restore: restore, done: make(chan struct{}), dir: d, dirPath: short, sock: filepath.Join(dir, name)}, nil
}

// serve accepts CRIU's connection and serves its requests until CRIU
// closes it, in the background. wait returns once every transfer ended.
func (s *imageServer) serve() {
	go func() {
		defer close(s.done)
		conn, err := s.ln.AcceptUnix()
		s.ln.Close() // CRIU connects once
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.fail(fmt.Errorf("image streamer: accept: %w", err))
			}
			return
		}
		defer conn.Close()
		s.mu.Lock()
		s.connected = true
		s.mu.Unlock()
		if err := s.session(conn); err != nil {
			s.fail(err)
		}
	}()
}

// wait stops accepting (when CRIU never connected) and waits for the
// session and every transfer; it returns their errors.
func (s *imageServer) wait() error {
	s.ln.Close()
	<-s.done
	s.wg.Wait()
	os.Remove(s.sock)
	s.dir.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

func (s *imageServer) fail(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

// session reads requests until CRIU closes the connection.
func (s *imageServer) session(c *net.UnixConn) error {
	for {
		name, err := readImageRequest(c)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("image streamer: %w", err)
		}
		if !validImageName(name) {
			return fmt.Errorf("image streamer: CRIU asked for an invalid image name %q", name)
		}
		if s.restore {
			ok := s.exists(name)
			if err := writeImageReply(c, ok); err != nil {
				return fmt.Errorf("image streamer: reply for %s: %w", name, err)
			}
			if !ok {
				continue
			}
		}
		pipe, err := recvPipe(c)
		if err != nil {
			return fmt.Errorf("image streamer: pipe for %s: %w", name, err)
		}
		_, _ = unix.FcntlInt(pipe.Fd(), unix.F_SETPIPE_SZ, streamPipeSize)
		s.wg.Go(func() {
			defer pipe.Close()
			if err := s.handle(name, pipe); err != nil {
				s.fail(fmt.Errorf("image %s: %w", name, err))
			}
		})
	}
}

// validImageName accepts the flat file names CRIU uses for images.
func validImageName(name string) bool {
	if name == "" || name == "." || name == ".." || len(name) > 255 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == '/' || c == 0 {
			return false
		}
	}
	return true
}

// readImageRequest reads one length-prefixed ImgStreamerRequestEntry and
// returns its file name. It reads exactly the request's bytes, so that the
// byte carrying the pipe stays in the socket for recvPipe. io.EOF means
// CRIU closed the connection between requests. c is CRIU's connection
// (an io.Reader, so that the parser can be fuzzed in memory).
func readImageRequest(c io.Reader) (string, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		if err == io.EOF {
			return "", io.EOF
		}
		return "", fmt.Errorf("read request: %w", err)
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n > maxRequest {
		return "", fmt.Errorf("request of %d bytes", n)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(c, msg); err != nil {
		return "", fmt.Errorf("read request: %w", err)
	}
	return parseImageRequest(msg)
}

// parseImageRequest decodes ImgStreamerRequestEntry{required string
// filename = 1}: tag 0x0a, a varint length, the bytes.
func parseImageRequest(msg []byte) (string, error) {
	if len(msg) < 2 || msg[0] != 0x0a {
		return "", fmt.Errorf("unexpected request %q", msg)
	}
	l, k := binary.Uvarint(msg[1:])
	if k <= 0 || l != uint64(len(msg)-1-k) {
		return "", fmt.Errorf("malformed request %q", msg)
	}
	return string(msg[1+k:]), nil
}

// writeImageReply sends ImgStreamerReplyEntry{required bool exists = 1}.
func writeImageReply(c *net.UnixConn, exists bool) error {
	b := []byte{2, 0, 0, 0, 0x08, 0}
	if exists {
		b[5] = 1
	}
	_, err := c.Write(b)
	return err
}

// recvPipe receives the pipe end CRIU passes with one dummy byte.
func recvPipe(c *net.UnixConn) (*os.File, error) {
	var b [1]byte
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(b[:], oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
		for i := range msgs {
			if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	if n != 1 || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("expected one byte with one descriptor, got %d bytes and %d descriptors", n, len(fds))
	}
	return os.NewFile(uintptr(fds[0]), "criu-image-pipe"), nil
}

// ImageStreamer serves the image streamer of a CRIU that another program
// starts: runc, through the swrk bridge (see WriteBridge). The images
// move exactly as in DumpStreamed and RestoreStreamed.
type ImageStreamer struct{ srv *imageServer }

// ServeDumpImages listens in dir (which must exist) for a dumping CRIU
// and hands every image to sink, as DumpStreamed does.
func ServeDumpImages(dir string, sink func(name string, r io.Reader) error) (*ImageStreamer, error) {
	srv, err := listenImages(dir, false)
	if err != nil {
		return nil, err
	}
	srv.handle = dumpHandler(sink)
	srv.serve()
	return &ImageStreamer{srv: srv}, nil
}

// ServeRestoreImages listens in dir (which must exist) for a restoring
// CRIU and serves it the images of src, as RestoreStreamed does.
func ServeRestoreImages(dir string, src ImageSource) (*ImageStreamer, error) {
	srv, err := listenImages(dir, true)
	if err != nil {
		return nil, err
	}
	srv.exists, srv.handle = src.Has, src.WriteImage
	srv.serve()
	return &ImageStreamer{srv: srv}, nil
}

// Dir is the images directory as CRIU must be given it (-D), valid until
// Wait returns.
func (s *ImageStreamer) Dir() string { return s.srv.dirPath }

// Wait stops listening, waits for every transfer and returns their
// errors; connected reports whether CRIU came at all (a CRIU that did
// not stream wrote or read its images as files).
func (s *ImageStreamer) Wait() (connected bool, err error) {
	err = s.srv.wait()
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	return s.srv.connected, err
}

// dumpHandler adapts an image sink to the server: after the sink
// returns, nothing of the image may be left unread.
func dumpHandler(sink func(name string, r io.Reader) error) func(string, *os.File) error {
	return func(name string, pipe *os.File) error {
		err := sink(name, pipe)
		if err == nil {
			// CRIU closed its end: make sure nothing is left unread.
			var b [1]byte
			if n, _ := pipe.Read(b[:]); n > 0 {
				err = errors.New("image sink stopped before the end of the image")
			}
		}
		return err
	}
}
