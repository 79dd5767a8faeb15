package criu

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseImageRequest(t *testing.T) {
	for _, tc := range []struct {
		msg  []byte
		want string
		ok   bool
	}{
		{append([]byte{0x0a, 11}, "pages-1.img"...), "pages-1.img", true},
		{[]byte{0x0a, 0}, "", true},
		{[]byte{0x12, 1, 'x'}, "", false},                 // wrong field
		{append([]byte{0x0a, 20}, "short"...), "", false}, // length beyond the message
		{[]byte{0x0a}, "", false},
		{nil, "", false},
	} {
		got, err := parseImageRequest(tc.msg)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseImageRequest(%q) = %q, %v", tc.msg, got, err)
		}
	}
	for name, ok := range map[string]bool{"pages-1.img": true, "": false, "..": false, "a/b": false, "a\x00": false} {
		if validImageName(name) != ok {
			t.Errorf("validImageName(%q) != %v", name, ok)
		}
	}
}

// fakeCRIU plays CRIU's side of the protocol: one request per image, the
// restore reply, then a pipe end passed with one byte.
type fakeCRIU struct {
	t *testing.T
	c *net.UnixConn
}

func (f *fakeCRIU) request(name string) {
	msg := append([]byte{0x0a, byte(len(name))}, name...)
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(len(msg)))
	if _, err := f.c.Write(append(hdr[:], msg...)); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeCRIU) reply() bool {
	b := make([]byte, 6)
	if _, err := io.ReadFull(f.c, b); err != nil {
		f.t.Fatal(err)
	}
	return b[5] == 1
}

func (f *fakeCRIU) sendPipeEnd(end *os.File) {
	if _, _, err := f.c.WriteMsgUnix([]byte{0}, unix.UnixRights(int(end.Fd())), nil); err != nil {
		f.t.Fatal(err)
	}
	end.Close()
}

// TestImageServerRestore serves two images, refuses a missing one, and
// keeps transfers concurrent (a reader that is not read from does not
// block the next request).
func TestImageServerRestore(t *testing.T) {
	dir := t.TempDir()
	srv, err := listenImages(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	images := map[string][]byte{"pagemap-1.img": []byte("map"), "pages-1.img": bytes.Repeat([]byte("p"), 3<<20)}
	srv.exists = func(name string) bool { _, ok := images[name]; return ok }
	srv.handle = func(name string, pipe *os.File) error {
		_, err := pipe.Write(images[name])
		return err
	}
	srv.serve()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(srv.dirPath, serveSocket), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeCRIU{t: t, c: c}

	f.request("missing.img")
	if f.reply() {
		t.Fatal("a missing image was said to exist")
	}
	var readers []*os.File
	for _, name := range []string{"pages-1.img", "pagemap-1.img"} { // pages first, read last
		f.request(name)
		if !f.reply() {
			t.Fatalf("%s said missing", name)
		}
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		f.sendPipeEnd(w)
		readers = append(readers, r)
	}
	for i, name := range []string{"pagemap-1.img", "pages-1.img"} {
		got, err := io.ReadAll(readers[1-i])
		if err != nil || !bytes.Equal(got, images[name]) {
			t.Fatalf("%s: %d bytes (%v)", name, len(got), err)
		}
	}
	c.Close()
	if err := srv.wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, serveSocket)); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestImageServerRefusesBadNames: a request naming a path ends the
// session with an error.
func TestImageServerRefusesBadNames(t *testing.T) {
	srv, err := listenImages(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	srv.handle = func(string, *os.File) error { return nil }
	srv.serve()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(srv.dirPath, captureSocket), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	(&fakeCRIU{t: t, c: c}).request("../escape.img")
	_, _ = io.ReadAll(c) // the server hangs up
	c.Close()
	if err := srv.wait(); err == nil {
		t.Fatal("a request for ../escape.img was accepted")
	}
}
