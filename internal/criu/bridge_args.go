package criu

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"
)

// bridgeArgs translates the options of a runc DUMP or RESTORE request
// (CRIU RPC) into the `criu` command line of the same operation with
// --stream. peer is runc's PID (descriptors in the request are runc's),
// images the directory whose streamer socket cedana serves, script the
// action script that relays CRIU's notifications to runc. It refuses,
// with the reason, a request that asks for something it does not
// translate: the caller then lets the real `criu swrk` do the operation,
// images staged as files.
//
// The precedence of runc's CRIU configuration file differs: over RPC
// the file (config_file) overrides the request, on the command line the
// options given override the file. runc puts nothing in the request that
// a user could also set in that file but the booleans, which only add.
func bridgeArgs(req *rpc.CriuReq, peer int, images, script string) ([]string, error) {
	o := req.GetOpts()
	if o == nil {
		return nil, fmt.Errorf("runc's request has no options")
	}
	left := o.CloneVT() // what is not translated stays set here
	var args []string
	switch req.GetType() {
	case rpc.CriuReqType_DUMP:
		args = []string{"dump", "--stream", "-t", strconv.Itoa(int(o.GetPid()))}
		left.Pid = nil
		switch {
		case o.GetLeaveRunning():
			args = append(args, "--leave-running")
		case o.GetLeaveStopped():
			args = append(args, "--leave-stopped")
		}
		left.LeaveRunning, left.LeaveStopped = nil, nil
		if o.FreezeCgroup != nil {
			args = append(args, "--freeze-cgroup", o.GetFreezeCgroup())
			left.FreezeCgroup = nil
		}
	case rpc.CriuReqType_RESTORE:
		// Over RPC CRIU returns once the tree is restored: detached.
		args = []string{"restore", "--stream", "--restore-detached"}
		if o.GetRstSibling() {
			args = append(args, "--restore-sibling")
		}
		left.RstSibling = nil
		for _, cg := range o.GetCgRoot() {
			v := cg.GetPath()
			if cg.Ctrl != nil {
				v = cg.GetCtrl() + ":" + v
			}
			args = append(args, "--cgroup-root", v)
		}
		left.CgRoot = nil
		for _, v := range o.GetVeths() {
			args = append(args, "--veth-pair", v.GetIfIn()+"="+v.GetIfOut())
		}
		left.Veths = nil
		for _, f := range o.GetInheritFd() {
			args = append(args, "--inherit-fd", fmt.Sprintf("fd[%d]:%s", f.GetFd(), f.GetKey()))
		}
		left.InheritFd = nil
		if o.GetEvasiveDevices() {
			args = append(args, "--evasive-devices")
		}
		left.EvasiveDevices = nil
		if o.LsmProfile != nil {
			args = append(args, "--lsm-profile", o.GetLsmProfile())
			left.LsmProfile = nil
		}
		if o.LsmMountContext != nil {
			args = append(args, "--lsm-mount-context", o.GetLsmMountContext())
			left.LsmMountContext = nil
		}
	default:
		return nil, fmt.Errorf("runc asked for a %s, which the bridge does not stream", req.GetType())
	}

	if o.GetImagesDirFd() < 0 {
		return nil, fmt.Errorf("runc gave no images directory descriptor")
	}
	if !sameDir(fmt.Sprintf("/proc/%d/fd/%d", peer, o.GetImagesDirFd()), images) {
		return nil, fmt.Errorf("runc's images directory is not the one cedana streams")
	}
	args = append(args, "-D", images)
	left.ImagesDirFd, left.ImagesDir = nil, nil
	if o.WorkDirFd != nil {
		args = append(args, "-W", fmt.Sprintf("/proc/%d/fd/%d", peer, o.GetWorkDirFd()))
		left.WorkDirFd = nil
	}
	logFile := o.GetLogFile()
	if logFile == "" {
		logFile = "criu.log"
	}
	args = append(args, "-o", logFile, "-v"+strconv.Itoa(int(max(o.GetLogLevel(), 0))))
	left.LogFile, left.LogLevel = nil, nil
	if o.Root != nil {
		args = append(args, "--root", o.GetRoot())
		left.Root = nil
	}
	if o.GetManageCgroups() || o.ManageCgroupsMode != nil {
		mode := "soft"
		if o.ManageCgroupsMode != nil {
			m, ok := map[rpc.CriuCgMode]string{rpc.CriuCgMode_IGNORE: "ignore", rpc.CriuCgMode_CG_NONE: "none",
				rpc.CriuCgMode_PROPS: "props", rpc.CriuCgMode_SOFT: "soft", rpc.CriuCgMode_FULL: "full",
				rpc.CriuCgMode_STRICT: "strict"}[o.GetManageCgroupsMode()]
			if ok {
				mode = m
			}
		}
		args = append(args, "--manage-cgroups="+mode)
	}
	left.ManageCgroups, left.ManageCgroupsMode = nil, nil
	if o.GetNotifyScripts() {
		args = append(args, "--action-script", script)
	}
	left.NotifyScripts = nil
	for _, f := range []struct {
		on   *bool
		flag string
		clr  func()
	}{
		{o.ShellJob, "--shell-job", func() { left.ShellJob = nil }},
		{o.TcpEstablished, "--tcp-established", func() { left.TcpEstablished = nil }},
		{o.ExtUnixSk, "--ext-unix-sk", func() { left.ExtUnixSk = nil }},
		{o.FileLocks, "--file-locks", func() { left.FileLocks = nil }},
		{o.LinkRemap, "--link-remap", func() { left.LinkRemap = nil }},
	} {
		if f.on != nil && *f.on {
			args = append(args, f.flag)
		}
		f.clr()
	}
	// Off is what the command line does anyway; on is not translated.
	for _, f := range []struct {
		on  *bool
		clr func()
	}{
		{o.AutoDedup, func() { left.AutoDedup = nil }},
		{o.LazyPages, func() { left.LazyPages = nil }},
		{o.TrackMem, func() { left.TrackMem = nil }},
	} {
		if f.on != nil && !*f.on {
			f.clr()
		}
	}
	// Only useful when restoring a terminal, which runc then hands over
	// through RPC; the caller does not stream containers with one.
	left.OrphanPtsMaster = nil
	switch ns := o.GetEmptyNs(); ns {
	case 0:
	case unix.CLONE_NEWNET:
		args = append(args, "--empty-ns", "net")
	default:
		return nil, fmt.Errorf("runc asked for empty namespaces %#x, of which the command line knows only net", ns)
	}
	left.EmptyNs = nil
	for _, e := range o.GetExternal() {
		args = append(args, "--external", e)
	}
	left.External = nil
	for _, m := range o.GetExtMnt() {
		args = append(args, "--ext-mount-map", m.GetKey()+":"+m.GetVal())
	}
	left.ExtMnt = nil
	if o.GhostLimit != nil {
		args = append(args, "--ghost-limit", strconv.FormatUint(uint64(o.GetGhostLimit()), 10))
		left.GhostLimit = nil
	}
	if o.NetworkLock != nil {
		l := map[rpc.CriuNetworkLockMethod]string{rpc.CriuNetworkLockMethod_IPTABLES: "iptables",
			rpc.CriuNetworkLockMethod_NFTABLES: "nftables", rpc.CriuNetworkLockMethod_SKIP: "skip"}[o.GetNetworkLock()]
		if l != "" {
			args = append(args, "--network-lock", l)
			left.NetworkLock = nil
		}
	}
	if o.ConfigFile != nil {
		// Over RPC a missing file is ignored; on the command line it is an error.
		if _, err := os.Stat(o.GetConfigFile()); err == nil {
			args = append(args, "--config", o.GetConfigFile())
		}
		left.ConfigFile = nil
	}
	if left.SizeVT() > 0 {
		rest := strings.TrimSpace(left.MarshalProtoText())
		rest = strings.TrimSuffix(strings.TrimPrefix(rest, "criu_opts {"), "}")
		return nil, fmt.Errorf("runc asked for CRIU options the bridge does not translate: %s", strings.Join(strings.Fields(rest), " "))
	}
	return args, nil
}

// sameDir reports whether a and b name the same directory.
func sameDir(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino && sa.Mode&unix.S_IFMT == unix.S_IFDIR
}
