// Command jsupload alternates uploads (or downloads) of the same bytes to (from) one
// nats-server — one plain nats.go object Put (Get), and cedana's jetstream backend — and
// reports for each the wall time and the CPU time of both processes: the client (getrusage
// of this process) and the server (/proc/PID/stat of nats-server). It is the probe behind
// the JetStream upload and download paragraphs of docs/benchmarks.md; bench/storage gives
// the figures the bars are judged on.
//
//	go run ./bench/jsupload [-size 268435456] [-rounds 5] [-modes plain,cedana] [-cpuprofile FILE]
//
// Modes: plain, cedana (the same key each time: from the second round on an upload
// replaces the previous one), plainfresh, cedanafresh (a new key each time), plainprng,
// cedanaprng (the bytes come from a producer that costs CPU, as a compressor does:
// ChaCha8 hashed on the way, instead of a file), plaindel, cedanadel (upload, then the
// delete is timed alone), plainget, cedanaget (a download of an object uploaded once
// before the first round, written to a file as bench/storage does: io.CopyBuffer). The
// order of the modes rotates from round to round. nats-server comes from the cache
// scripts/setup-servers.sh fills (CEDANA_SERVER_CACHE, default /var/cache/cedana/bin) and
// listens on 127.0.0.1 only.
package main

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cedana/cedana/bench/benchkit"
	"github.com/cedana/cedana/internal/storage"
)

func main() {
	size := flag.Int64("size", 256<<20, "bytes per upload or download")
	rounds := flag.Int("rounds", 5, "rounds (each runs every mode once)")
	modes := flag.String("modes", "plain,cedana", "comma-separated modes (see the package doc)")
	prof := flag.String("cpuprofile", "", "write a CPU profile of this process to `file`")
	flag.Parse()
	if err := run(*size, *rounds, strings.Split(*modes, ","), *prof); err != nil {
		fmt.Fprintln(os.Stderr, "jsupload:", err)
		os.Exit(1)
	}
}

// sample is one upload: wall time, client CPU, server CPU (seconds).
type sample [3]float64

func run(size int64, rounds int, names []string, prof string) error {
	work, err := os.MkdirTemp("", "cedana-jsupload-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	src := filepath.Join(work, "src")
	if err := benchkit.MakeSource(src, size); err != nil {
		return err
	}
	addr, srv, stop, err := benchkit.StartNATS(work)
	if err != nil {
		return err
	}
	defer stop()
	ctx := context.Background()
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
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "plain"})
	if err != nil {
		return err
	}

	fromFile := func(f func(io.Reader) error) error {
		r, err := os.Open(src)
		if err != nil {
			return err
		}
		defer r.Close()
		return f(r)
	}
	prng := func() io.Reader {
		return io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{9}), size), sha256.New())
	}
	// Without a deadline nats.go gives a whole Put or Get 5 s; a minute here (as in
	// bench/storage).
	plainCtx := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, time.Minute) }
	plainPut := func(name string) func(io.Reader) error {
		return func(r io.Reader) error {
			ctx, cancel := plainCtx()
			defer cancel()
			_, err := obs.Put(ctx, jetstream.ObjectMeta{Name: name}, r)
			return err
		}
	}
	cedanaPut := func(key string) func(io.Reader) error {
		return func(r io.Reader) error {
			w, err := b.Create(ctx, key)
			if err != nil {
				return err
			}
			if _, err := io.CopyBuffer(w, r, make([]byte, 1<<20)); err != nil {
				w.Abort()
				return err
			}
			return w.Commit()
		}
	}
	timed := func(what string, f func() error) error {
		t0 := time.Now()
		err := f()
		fmt.Printf("  %s %.3f s\n", what, time.Since(t0).Seconds())
		return err
	}
	// download reads r whole into a file, as bench/storage's downloads do.
	download := func(r io.Reader) error {
		f, err := os.Create(filepath.Join(work, "down"))
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.CopyBuffer(f, r, make([]byte, 1<<20))
		return err
	}
	cedanaGet := func(f func(io.Reader) error) error {
		obj, err := b.Open(ctx, "bench/get")
		if err != nil {
			return err
		}
		defer obj.Close()
		r, err := obj.Stream(0, -1)
		if err != nil {
			return err
		}
		defer r.Close()
		return f(r)
	}
	uploaded := map[string]bool{}
	once := func(key string, put func(io.Reader) error) error {
		if uploaded[key] {
			return nil
		}
		uploaded[key] = true
		return fromFile(put)
	}
	seq := 0
	ops := map[string]func() error{
		"plain":  func() error { return fromFile(plainPut("obj")) },
		"cedana": func() error { return fromFile(cedanaPut("bench/obj")) },
		"plainfresh": func() error {
			seq++
			return fromFile(plainPut(fmt.Sprint("obj", seq)))
		},
		"cedanafresh": func() error {
			seq++
			return fromFile(cedanaPut(fmt.Sprint("bench/obj", seq)))
		},
		"plainprng":  func() error { return plainPut("prng")(prng()) },
		"cedanaprng": func() error { return cedanaPut("bench/prng")(prng()) },
		"plaindel": func() error {
			if err := fromFile(plainPut("del")); err != nil {
				return err
			}
			return timed("plain delete", func() error { return obs.Delete(ctx, "del") })
		},
		"cedanadel": func() error {
			if err := fromFile(cedanaPut("bench/del")); err != nil {
				return err
			}
			return timed("cedana delete", func() error { return b.Delete(ctx, "bench/del") })
		},
		"plainget": func() error {
			ctx, cancel := plainCtx()
			defer cancel()
			r, err := obs.Get(ctx, "get")
			if err != nil {
				return err
			}
			defer r.Close()
			return download(r)
		},
		"cedanaget": func() error { return cedanaGet(download) },
	}
	prepare := map[string]func() error{
		"plainget":  func() error { return once("get", plainPut("get")) },
		"cedanaget": func() error { return once("bench/get", cedanaPut("bench/get")) },
	}
	for _, n := range names {
		if ops[n] == nil {
			return fmt.Errorf("unknown mode %q", n)
		}
		if p := prepare[n]; p != nil {
			if err := p(); err != nil {
				return fmt.Errorf("%s: %w", n, err)
			}
		}
	}
	if prof != "" {
		f, err := os.Create(prof)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Printf("%.2f GiB per transfer, nats-server PID %d\n", float64(size)/(1<<30), srv)
	res := map[string][]sample{}
	for r := 0; r < rounds; r++ {
		for i := range names {
			n := names[(i+r)%len(names)]
			s0, c0, t0 := procCPU(srv), selfCPU(), time.Now()
			if err := ops[n](); err != nil {
				return fmt.Errorf("%s: %w", n, err)
			}
			s := sample{time.Since(t0).Seconds(), selfCPU() - c0, procCPU(srv) - s0}
			res[n] = append(res[n], s)
			fmt.Printf("round %d %-11s wall %.3f s, client %.3f CPU-s, server %.3f CPU-s\n", r, n, s[0], s[1], s[2])
		}
	}
	for _, n := range names {
		fmt.Printf("median %-11s wall %.3f s, client %.3f CPU-s, server %.3f CPU-s\n", n, median(res[n], 0), median(res[n], 1), median(res[n], 2))
	}
	if len(names) == 2 {
		fmt.Printf("ratio %s / %s (median wall): %.2f\n", names[1], names[0], median(res[names[1]], 0)/median(res[names[0]], 0))
	}
	return nil
}

func median(xs []sample, k int) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = x[k]
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

// procCPU is the user+system CPU time of process pid, in seconds.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:]) // fields from the 3rd (state) on
	u, _ := strconv.ParseFloat(f[11], 64)                // utime, field 14
	k, _ := strconv.ParseFloat(f[12], 64)                // stime, field 15
	return (u + k) / 100                                 // USER_HZ
}

// selfCPU is this process's user+system CPU time, in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
