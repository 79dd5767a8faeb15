package criu

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"
)

// The swrk bridge lets runc's CRIU stream its images.
//
// runc drives CRIU only through RPC (`criu swrk FD`), and CRIU cannot
// stream there: its service opens the images directory with mode -1
// (criu/cr-service.c, setup_images_and_workdir: "Image streaming is not
// supported with CRIU's service feature"), so a configuration file or
// CRIU_CONFIG_FILE that says `stream` makes img_streamer_init() hit
// BUG() in socket_name_for_mode(-1) (criu/img-streamer.c) and CRIU
// aborts. But runc runs whatever `--criu PATH` names. Cedana gives it a
// per-operation script in the operation's work directory that runs
// `cedana criu-bridge`: the bridge answers runc's RPC, turns its DUMP or
// RESTORE request into the equivalent `criu dump|restore --stream`
// command line (bridgeArgs), relays CRIU's notifications (action
// scripts) to runc as RPC notifications, and answers runc as CRIU's
// service would. The images go through the streamer socket that cedana
// serves in the images directory, with the same code as a process's.
//
// Anything else (runc's version and feature checks), and a request the
// bridge cannot translate, goes to the real `criu swrk` unchanged but for
// leave_stopped: the operation then stages its images as files, and the
// bridge's log says why.

// BridgeConfig is the configuration of one bridged operation, written as
// JSON next to the script.
type BridgeConfig struct {
	// CRIU is the real criu binary.
	CRIU string `json:"criu"`
	// Images is the images directory as CRIU must name it: the short
	// path of the directory whose streamer socket cedana serves (see
	// ImageStreamer.Dir). Empty: never stream, only relay.
	Images string `json:"images,omitempty"`
	// LeaveStopped makes a dump that runc asks to leave running leave
	// the tree stopped instead, so that cedana decides, once its archive
	// is durable, whether it is killed or resumed.
	LeaveStopped bool `json:"leave_stopped,omitempty"`
	// Log is the bridge's log, in the work directory (set by
	// WriteBridge): what it ran, and why it did not stream.
	Log string `json:"log"`
}

const (
	bridgeScript = "criu"
	bridgeConfig = "criu-bridge.json"
	// bridgeNotifyEnv names the socket on which the bridge takes CRIU's
	// notifications, for the action script.
	bridgeNotifyEnv = "CEDANA_BRIDGE_NOTIFY"
	// BridgeCommand is the cedana subcommand that runs the bridge.
	BridgeCommand = "criu-bridge"
)

// WriteBridge writes the bridge's configuration and script into workDir
// (private to one operation) and returns the script, to give runc as
// its CRIU (`runc --criu SCRIPT`). cedana is the cedana executable. It
// sets cfg.Log.
func WriteBridge(workDir, cedana string, cfg *BridgeConfig) (string, error) {
	cfg.Log = filepath.Join(workDir, "criu-bridge.log")
	conf := filepath.Join(workDir, bridgeConfig)
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(conf, data, 0o600); err != nil {
		return "", fmt.Errorf("write the CRIU bridge's configuration: %w", err)
	}
	script := filepath.Join(workDir, bridgeScript)
	body := fmt.Sprintf("#!/bin/sh\n# runc runs this as its CRIU (`criu swrk FD`); cedana's bridge turns the request into `criu --stream`.\nexec %s %s --config %s \"$@\"\n",
		shellQuote(cedana), BridgeCommand, shellQuote(conf))
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		return "", fmt.Errorf("write the CRIU bridge's script: %w", err)
	}
	return script, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// BridgeLog returns what a bridged operation's log says about not
// streaming ("" when it streamed or never ran).
func BridgeLog(cfg BridgeConfig) string {
	data, _ := os.ReadFile(cfg.Log)
	var why []string
	for _, l := range strings.Split(string(data), "\n") {
		if _, r, ok := strings.Cut(l, " staged: "); ok {
			why = append(why, r)
		}
	}
	return strings.Join(why, "; ")
}

// RunBridge is `cedana criu-bridge --config FILE ARGS...`: with ARGS
// `swrk FD` it serves runc's RPC; run by CRIU as an action script
// (CRTOOLS_SCRIPT_ACTION set, no ARGS) it relays the notification to the
// bridge. It returns the exit status. It never writes to its standard
// output or error: on a restore they are the container's.
func RunBridge(args []string) int {
	inherited := openFDs() // before the Go runtime opens its own
	if len(args) < 2 || args[0] != "--config" {
		return 2
	}
	data, err := os.ReadFile(args[1])
	if err != nil {
		return 2
	}
	var cfg BridgeConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return 2
	}
	rest := args[2:]
	if action := os.Getenv("CRTOOLS_SCRIPT_ACTION"); action != "" && len(rest) == 0 {
		return notifyBridge(action)
	}
	lf, err := os.OpenFile(cfg.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 2
	}
	defer lf.Close()
	logf := func(format string, a ...any) {
		fmt.Fprintf(lf, "%s %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, a...))
	}
	if len(rest) != 2 || rest[0] != "swrk" {
		logf("unexpected arguments %q", rest)
		return 2
	}
	fd, err := strconv.Atoi(rest[1])
	if err != nil || fd < 3 {
		logf("bad swrk descriptor %q", rest[1])
		return 2
	}
	b := &bridge{cfg: cfg, logf: logf, inherited: slices.DeleteFunc(inherited, func(n int) bool { return n == fd })}
	if err := b.serve(fd); err != nil {
		logf("failed: %v", err)
		return 1
	}
	return 0
}

type bridge struct {
	cfg       BridgeConfig
	logf      func(string, ...any)
	inherited []int // descriptors from runc, but its socket
	runc      *net.UnixConn
	peer      int        // runc's PID
	mu        sync.Mutex // one notification at a time on runc's socket
}

func (b *bridge) serve(fd int) error {
	f := os.NewFile(uintptr(fd), "runc")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	b.runc = c.(*net.UnixConn)
	defer b.runc.Close()
	msg, err := b.read()
	if err != nil {
		return fmt.Errorf("read runc's request: %w", err)
	}
	req := &rpc.CriuReq{}
	if err := req.UnmarshalVT(msg); err != nil {
		return fmt.Errorf("runc's request: %w", err)
	}
	if rc, err := b.runc.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
				b.peer = int(cred.Pid)
			}
		})
	}
	t := req.GetType()
	if t != rpc.CriuReqType_DUMP && t != rpc.CriuReqType_RESTORE {
		return b.relay(req)
	}
	if t == rpc.CriuReqType_DUMP && b.cfg.LeaveStopped && req.GetOpts().GetLeaveRunning() {
		req.Opts.LeaveRunning, req.Opts.LeaveStopped = nil, boolp(true)
	}
	if b.cfg.Images == "" {
		b.logf("staged: cedana did not ask to stream")
		return b.relay(req)
	}
	if b.peer == 0 {
		b.logf("staged: runc's PID is unknown")
		return b.relay(req)
	}
	// CRIU runs the same script as its action script (no arguments,
	// CRTOOLS_SCRIPT_ACTION set): see notifyBridge.
	script := filepath.Join(filepath.Dir(b.cfg.Log), bridgeScript)
	args, err := bridgeArgs(req, b.peer, b.cfg.Images, script)
	if err != nil {
		b.logf("staged: %v", err)
		return b.relay(req)
	}
	return b.stream(req, args)
}

func boolp(v bool) *bool { return &v }

// read reads one message from runc.
func (b *bridge) read() ([]byte, error) {
	buf := make([]byte, 1<<16)
	n, _, _, _, err := b.runc.ReadMsgUnix(buf, nil)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, io.EOF
	}
	return buf[:n], nil
}

func (b *bridge) send(resp *rpc.CriuResp) error {
	data, err := resp.MarshalVT()
	if err != nil {
		return err
	}
	_, err = b.runc.Write(data)
	return err
}

// stream runs the request as `criu ARGS` and answers runc.
func (b *bridge) stream(req *rpc.CriuReq, args []string) error {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: fmt.Sprintf("@cedana-bridge-%d-%d", os.Getpid(), time.Now().UnixNano()), Net: "unix"})
	if err != nil {
		return err
	}
	defer ln.Close()
	go b.notifications(ln)

	t := req.GetType()
	var pidFile string
	if t == rpc.CriuReqType_RESTORE {
		pidFile = filepath.Join(filepath.Dir(b.cfg.Log), "restored.pid")
		os.Remove(pidFile)
		args = append(args, "--pidfile", pidFile)
	}
	b.logf("streaming: %s %s", b.cfg.CRIU, strings.Join(args, " "))
	cmd := exec.Command(b.cfg.CRIU, args...)
	// Its stdio are runc's (the container's on a restore: inherit_fd
	// names them), and so are the descriptors runc passed.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = b.extraFiles()
	cmd.Env = append(os.Environ(), bridgeNotifyEnv+"="+ln.Addr().String())
	runErr := cmd.Run()
	resp := &rpc.CriuResp{Type: &t, Success: boolp(runErr == nil)}
	if runErr != nil {
		b.logf("criu: %v", runErr)
		resp.CrErrno = new(int32)
	} else if t == rpc.CriuReqType_RESTORE {
		pid, err := readPID(pidFile)
		if err != nil {
			b.logf("%v", err)
			resp.Success = boolp(false)
		} else {
			resp.Restore = &rpc.CriuRestoreResp{Pid: new(int32)}
			*resp.Restore.Pid = int32(pid)
		}
	} else {
		resp.Dump = &rpc.CriuDumpResp{}
	}
	b.mu.Lock()
	err = b.send(resp)
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("answer runc: %w", err)
	}
	if !resp.GetSuccess() {
		return errors.New("criu failed")
	}
	return nil
}

// extraFiles are the descriptors runc passed, at the same numbers
// (inherit_fd names them by number), /dev/null in the gaps.
func (b *bridge) extraFiles() []*os.File {
	if len(b.inherited) == 0 {
		return nil
	}
	top := slices.Max(b.inherited)
	files := make([]*os.File, top-2)
	null, _ := os.Open(os.DevNull)
	for i := range files {
		files[i] = null
	}
	for _, fd := range b.inherited {
		files[fd-3] = os.NewFile(uintptr(fd), "runc-"+strconv.Itoa(fd))
	}
	return files
}

// notifications serves the action script: one line "ACTION PID" per
// connection, answered "ok" once runc acknowledged it.
func (b *bridge) notifications(ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if !rootPeer(c) {
				return // only CRIU's action script, run as root, may notify
			}
			buf := make([]byte, 256)
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			f := strings.Fields(string(buf[:n]))
			if len(f) == 0 {
				return
			}
			if err := b.notify(f[0], f[1:]); err != nil {
				b.logf("notification %s: %v", f[0], err)
				_, _ = c.Write([]byte("fail"))
				return
			}
			_, _ = c.Write([]byte("ok"))
		}()
	}
}

// rootPeer reports whether c's peer runs as root.
func rootPeer(c *net.UnixConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	_ = rc.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		ok = err == nil && cred.Uid == 0
	})
	return ok
}

// notify passes one of CRIU's notifications to runc and waits for its
// answer, as CRIU's service does (send_criu_rpc_script).
func (b *bridge) notify(action string, rest []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := rpc.CriuReqType_NOTIFY
	n := &rpc.CriuNotify{Script: &action}
	if (action == "setup-namespaces" || action == "post-restore") && len(rest) > 0 {
		pid, err := strconv.Atoi(rest[0])
		if err != nil {
			return fmt.Errorf("bad pid %q", rest[0])
		}
		n.Pid = new(int32)
		*n.Pid = int32(pid)
	}
	if err := b.send(&rpc.CriuResp{Type: &t, Success: boolp(true), Notify: n}); err != nil {
		return err
	}
	msg, err := b.read()
	if err != nil {
		return err
	}
	req := &rpc.CriuReq{}
	if err := req.UnmarshalVT(msg); err != nil {
		return err
	}
	if req.GetType() != rpc.CriuReqType_NOTIFY || !req.GetNotifySuccess() {
		return errors.New("runc reported a failure")
	}
	return nil
}

// notifyBridge is the action script's side of notify.
func notifyBridge(action string) int {
	addr := os.Getenv(bridgeNotifyEnv)
	if addr == "" {
		return 1
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return 1
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "%s %s", action, os.Getenv("CRTOOLS_INIT_PID")); err != nil {
		return 1
	}
	buf := make([]byte, 8)
	n, _ := c.Read(buf)
	if string(buf[:n]) != "ok" {
		return 1
	}
	return 0
}

// relay hands the session to the real `criu swrk`: the first request
// (possibly changed) and everything after, both ways, descriptors
// included, until CRIU closes its end.
func (b *bridge) relay(first *rpc.CriuReq) error {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "bridge"), os.NewFile(uintptr(pair[1]), "criu")
	fc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return err
	}
	criuConn := fc.(*net.UnixConn)
	defer criuConn.Close()
	// CRIU opens the directories runc names by descriptor through
	// /proc/PEER/fd, PEER being who made the socket: the bridge now.
	var dirFDs []**int32
	if o := first.GetOpts(); o != nil && b.peer != 0 {
		dirFDs = []**int32{&o.ImagesDirFd, &o.WorkDirFd}
	}
	for _, fdp := range dirFDs {
		if *fdp == nil || **fdp < 0 {
			continue
		}
		d, err := os.Open(fmt.Sprintf("/proc/%d/fd/%d", b.peer, **fdp))
		if err != nil {
			return err
		}
		defer d.Close()
		n := int32(d.Fd())
		*fdp = &n
	}
	cmd := exec.Command(b.cfg.CRIU, "swrk", "3")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	extra := b.extraFiles()
	if len(extra) == 0 {
		extra = []*os.File{theirs}
	} else {
		extra[0] = theirs
	}
	cmd.ExtraFiles = extra
	if err := cmd.Start(); err != nil {
		theirs.Close()
		return err
	}
	theirs.Close()
	data, err := first.MarshalVT()
	if err == nil {
		_, err = criuConn.Write(data)
	}
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return err
	}
	go pump(b.runc, criuConn) // runc's answers to notifications
	pump(criuConn, b.runc)    // until CRIU closes its end
	return cmd.Wait()
}

// pump copies seqpacket messages with their descriptors from src to dst
// until src ends.
func pump(src, dst *net.UnixConn) {
	buf := make([]byte, 1<<16)
	oob := make([]byte, unix.CmsgSpace(4*16))
	for {
		n, oobn, _, _, err := src.ReadMsgUnix(buf, oob)
		if err != nil || (n == 0 && oobn == 0) {
			return
		}
		var rights []byte
		var fds []int
		if oobn > 0 {
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for i := range msgs {
					if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
						fds = append(fds, got...)
					}
				}
			}
			if len(fds) > 0 {
				rights = unix.UnixRights(fds...)
			}
		}
		_, _, err = dst.WriteMsgUnix(buf[:n], rights, nil)
		for _, fd := range fds {
			unix.Close(fd)
		}
		if err != nil {
			return
		}
	}
}

// openFDs lists this process's descriptors from 3 on.
func openFDs() []int {
	var fds []int
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	own := int(d.Fd())
	d.Close()
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err == nil && fd >= 3 && fd != own {
			fds = append(fds, fd)
		}
	}
	slices.Sort(fds)
	return fds
}
