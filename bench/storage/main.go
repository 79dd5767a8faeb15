// Command storage measures internal/storage against the plain tools it must keep up with:
// for the dir backend `cp` (+ `sync FILE`, as Commit fsyncs), for s3 a multipart upload and
// a GET by minio-go alone, for jetstream one object Put/Get by nats.go alone; then the same
// backends wrapped with encryption, and age alone against the chunked AES-GCM it wraps.
//
//	go run ./bench/storage [-size 1GiB] [-runs 3] [-backends dir,s3,jetstream] [-dir DIR] [-cpuprofile FILE]
//
// versitygw and nats-server come from the cache scripts/setup-servers.sh fills
// (CEDANA_SERVER_CACHE, default /var/cache/cedana/bin) and listen on 127.0.0.1 only. Each
// figure is the best of -runs runs (this kind of VM varies by ±30 %).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cedana/cedana/bench/benchkit"
	"github.com/cedana/cedana/internal/storage"
)

const (
	access = "benchaccess"
	secret = "bench-secret-key"
)

func main() {
	size := flag.Int64("size", 1<<30, "bytes per object")
	runs := flag.Int("runs", 3, "runs per figure (the best is kept)")
	backends := flag.String("backends", "dir,s3,jetstream", "which backends to measure")
	base := flag.String("dir", os.TempDir(), "directory for the source file, the dir backend and the servers' data")
	cryptoOnly := flag.Bool("crypto", true, "also compare age alone with chunked AES-GCM (in memory)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this process (the plain tools and cedana's storage; not the servers) to `file`")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "storage bench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*size, *runs, *backends, *base, *cryptoOnly); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "storage bench:", err)
		os.Exit(1)
	}
}

type row struct {
	what       string
	base, ours time.Duration
	note       string
}

func best(runs int, f func() error) (time.Duration, error) {
	var b time.Duration
	for i := 0; i < runs; i++ {
		t0 := time.Now()
		if err := f(); err != nil {
			return 0, err
		}
		if d := time.Since(t0); b == 0 || d < b {
			b = d
		}
	}
	return b, nil
}

func run(size int64, runs int, which, base string, cryptoToo bool) error {
	work, err := os.MkdirTemp(base, "cedana-storage-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	src := filepath.Join(work, "src")
	if err := benchkit.MakeSource(src, size); err != nil {
		return err
	}
	key := filepath.Join(work, "key")
	if _, err := storage.KeyGen(key); err != nil {
		return err
	}
	k, err := storage.LoadKey(key)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var rows []row
	add := func(r row) { rows = append(rows, r); printRow(r) }
	fmt.Printf("object size %.2f GiB, best of %d runs, GOMAXPROCS from the machine\n\n", float64(size)/(1<<30), runs)
	fmt.Println("| step | plain tool | cedana storage | ratio | note |\n| --- | --- | --- | --- | --- |")

	measure := func(name string, b storage.Backend, baseUp, baseDown func() error, note string) error {
		up, err := best(runs, func() error { return upload(ctx, b, src) })
		if err != nil {
			return fmt.Errorf("%s upload: %w", name, err)
		}
		dst := filepath.Join(work, "down")
		down, err := best(runs, func() error { return download(ctx, b, dst) })
		if err != nil {
			return fmt.Errorf("%s download: %w", name, err)
		}
		os.Remove(dst)
		// A plain tool that fails (nats.go's single-object Get of 1 GiB timed out
		// here under load) is reported, not fatal: cedana's own figures stand.
		if bu, err := best(runs, baseUp); err != nil {
			fmt.Printf("| %s upload | failed: %v | %.2f s | — | %s |\n", name, err, up.Seconds(), note)
		} else {
			add(row{name + " upload", bu, up, note})
		}
		if bd, err := best(runs, baseDown); err != nil {
			fmt.Printf("| %s download | failed: %v | %.2f s | — | %s |\n", name, err, down.Seconds(), note)
		} else {
			add(row{name + " download", bd, down, note})
		}
		e, _ := storage.NewEncrypted(b, k)
		eu, err := best(runs, func() error { return upload(ctx, e, src) })
		if err != nil {
			return fmt.Errorf("%s encrypted upload: %w", name, err)
		}
		ed, err := best(runs, func() error { return download(ctx, e, dst) })
		if err != nil {
			return fmt.Errorf("%s encrypted download: %w", name, err)
		}
		os.Remove(dst)
		add(row{name + " upload, encrypted", up, eu, "vs. unencrypted cedana storage"})
		add(row{name + " download, encrypted", down, ed, "vs. unencrypted cedana storage"})
		return nil
	}

	for _, name := range strings.Split(which, ",") {
		switch name {
		case "dir":
			root := filepath.Join(work, "dirbackend")
			os.Mkdir(root, 0o755)
			b, err := storage.NewDir("dir", root)
			if err != nil {
				return err
			}
			cpDst := filepath.Join(work, "cp")
			err = measure("dir", b,
				func() error { return sh("cp", src, cpDst, "&&", "sync", cpDst) },
				func() error { return sh("cp", filepath.Join(root, "bench/obj"), cpDst) },
				"plain tool: cp + sync FILE up, cp down")
			os.Remove(cpDst)
			if err != nil {
				return err
			}
		case "s3":
			addr, stop, err := startVersity(work)
			if err != nil {
				return err
			}
			err = benchS3(ctx, addr, src, size, work, measure)
			stop()
			if err != nil {
				return err
			}
		case "jetstream":
			addr, _, stop, err := benchkit.StartNATS(work)
			if err != nil {
				return err
			}
			err = benchJS(ctx, addr, src, work, measure)
			stop()
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown backend %q", name)
		}
	}
	if cryptoToo {
		if err := benchCrypto(ctx, src, k, runs, add); err != nil {
			return err
		}
	}
	return nil
}

func printRow(r row) {
	fmt.Printf("| %s | %.2f s | %.2f s | %.2f× | %s |\n", r.what, r.base.Seconds(), r.ours.Seconds(), r.ours.Seconds()/r.base.Seconds(), r.note)
}

func sh(args ...string) error {
	out, err := exec.Command("sh", "-c", strings.Join(args, " ")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func upload(ctx context.Context, b storage.Backend, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	w, err := b.Create(ctx, "bench/obj")
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(w, f, make([]byte, 1<<20)); err != nil {
		w.Abort()
		return err
	}
	return w.Commit()
}

func download(ctx context.Context, b storage.Backend, dst string) error {
	obj, err := b.Open(ctx, "bench/obj")
	if err != nil {
		return err
	}
	defer obj.Close()
	r, err := obj.Stream(0, -1)
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.CopyBuffer(f, r, make([]byte, 1<<20))
	return err
}

func startVersity(work string) (string, func(), error) {
	data := filepath.Join(work, "s3data")
	os.Mkdir(data, 0o755)
	addr, err := benchkit.FreeAddr()
	if err != nil {
		return "", nil, err
	}
	c, _ := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(access, secret, ""), BucketLookup: minio.BucketLookupPath, Region: "us-east-1"})
	_, stop, err := benchkit.StartServer(work, benchkit.ServerBin("versitygw-v1.8.0"),
		[]string{"--access", access, "--secret", secret, "--port", addr, "--region", "us-east-1", "--quiet", "posix", data},
		func() error { _, err := c.ListBuckets(context.Background()); return err })
	if err != nil {
		return "", nil, err
	}
	if err := c.MakeBucket(context.Background(), "bench", minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		stop()
		return "", nil, err
	}
	return addr, stop, nil
}

type measureFunc func(name string, b storage.Backend, baseUp, baseDown func() error, note string) error

func benchS3(ctx context.Context, addr, src string, size int64, work string, measure measureFunc) error {
	b, err := storage.NewS3(ctx, storage.S3Config{Endpoint: "http://" + addr, Bucket: "bench", Region: "us-east-1",
		PathStyle: true, AccessKey: access, SecretKey: secret})
	if err != nil {
		return err
	}
	c, _ := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(access, secret, ""), BucketLookup: minio.BucketLookupPath, Region: "us-east-1"})
	opts := minio.PutObjectOptions{PartSize: 16 << 20, NumThreads: 4}
	return measure("s3 (versitygw)", b,
		func() error {
			f, err := os.Open(src)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = c.PutObject(ctx, "bench", "sdk/obj", f, size, opts)
			return err
		},
		func() error {
			o, err := c.GetObject(ctx, "bench", "sdk/obj", minio.GetObjectOptions{})
			if err != nil {
				return err
			}
			defer o.Close()
			f, err := os.Create(filepath.Join(work, "sdkdown"))
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.CopyBuffer(f, o, make([]byte, 1<<20))
			return err
		}, "plain tool: minio-go PutObject (multipart, 16 MiB × 4) / GetObject")
}

func benchJS(ctx context.Context, addr, src, work string, measure measureFunc) error {
	b, err := storage.NewJetStream(ctx, storage.JetStreamConfig{URL: "nats://" + addr, Bucket: "bench", CreateBucket: true})
	if err != nil {
		return err
	}
	defer b.Close()
	nc, err := nats.Connect("nats://" + addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "plain"})
	if err != nil {
		return err
	}
	// nats.go gives a Put or Get whose context has no deadline its default timeout (5 s)
	// for the whole transfer: a 1 GiB Get failed with "nats: timeout" on a loaded VM.
	// The plain tool gets a minute (a Get of an object whose Put failed waits that long).
	plainCtx := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, time.Minute) }
	// The plain download reads an object of its own, stored before (up to 3 tries, not
	// timed): the timed Put of 1 GiB often fails with "429 too many requests", and a Get
	// of what a failed Put left behind waits for chunks that never come.
	var stored error
	for try := 0; try < 3; try++ {
		if stored = func() error {
			f, err := os.Open(src)
			if err != nil {
				return err
			}
			defer f.Close()
			ctx, cancel := plainCtx()
			defer cancel()
			_, err = obs.Put(ctx, jetstream.ObjectMeta{Name: "get"}, f)
			return err
		}(); stored == nil {
			break
		}
	}
	return measure("jetstream (nats-server, R1)", b,
		func() error {
			f, err := os.Open(src)
			if err != nil {
				return err
			}
			defer f.Close()
			ctx, cancel := plainCtx()
			defer cancel()
			_, err = obs.Put(ctx, jetstream.ObjectMeta{Name: "obj"}, f)
			return err
		},
		func() error {
			ctx, cancel := plainCtx()
			defer cancel()
			if stored != nil {
				return fmt.Errorf("storing the object to download: %w", stored)
			}
			r, err := obs.Get(ctx, "get")
			if err != nil {
				return err
			}
			defer r.Close()
			f, err := os.Create(filepath.Join(work, "jsdown"))
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.CopyBuffer(f, r, make([]byte, 1<<20))
			return err
		}, "plain tool: one nats.go object Put/Get (default 128 KiB chunks)")
}

// benchCrypto compares age alone with the age-wrapped chunked AES-GCM of
// storage.Encrypted, in memory (no disk, no network).
func benchCrypto(ctx context.Context, src string, k *storage.Key, runs int, add func(row)) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return err
	}
	var ageCT bytes.Buffer
	ageEnc, err := best(runs, func() error {
		ageCT.Reset()
		w, err := age.Encrypt(&ageCT, id.Recipient())
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
		return w.Close()
	})
	if err != nil {
		return err
	}
	ageDec, err := best(runs, func() error {
		r, err := age.Decrypt(bytes.NewReader(ageCT.Bytes()), id)
		if err != nil {
			return err
		}
		_, err = io.CopyBuffer(io.Discard, r, make([]byte, 1<<20))
		return err
	})
	if err != nil {
		return err
	}
	ageCT = bytes.Buffer{}
	m := storage.NewMemory()
	e, _ := storage.NewEncrypted(m, k)
	gcmEnc, err := best(runs, func() error { return storage.Put(ctx, e, "x", bytes.NewReader(data)) })
	if err != nil {
		return err
	}
	gcmDec, err := best(runs, func() error {
		obj, err := e.Open(ctx, "x")
		if err != nil {
			return err
		}
		defer obj.Close()
		r, err := obj.Stream(0, -1)
		if err != nil {
			return err
		}
		defer r.Close()
		_, err = io.CopyBuffer(io.Discard, r, make([]byte, 1<<20))
		return err
	})
	if err != nil {
		return err
	}
	gbs := func(d time.Duration) string { return fmt.Sprintf("%.2f GB/s", float64(len(data))/d.Seconds()/1e9) }
	add(row{"encrypt in memory: age alone vs. age-wrapped chunked AES-GCM", ageEnc, gcmEnc, gbs(ageEnc) + " vs. " + gbs(gcmEnc) + " (GCM side includes the memory backend's copy)"})
	add(row{"decrypt in memory: age alone vs. age-wrapped chunked AES-GCM", ageDec, gcmDec, gbs(ageDec) + " vs. " + gbs(gcmDec)})
	return nil
}
