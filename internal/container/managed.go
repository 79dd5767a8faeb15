package container

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A managed container is a runc container that Cedana started (or
// restored). Its directory, Settings.StateDir/ID, is the bundle runc
// actually runs:
//
//	config.json       the user's config.json with root.path pointing at rootfs/
//	                  and a poststop hook that unmounts it
//	config.orig.json  the user's config.json as given (travels in archives)
//	meta.json         the original bundle and base rootfs
//	rootfs/           overlay: lowerdir = the bundle's rootfs, upperdir = upper/
//	upper/, work/     the container's writable layer and overlayfs's work dir
//
// Its stdout and stderr are logged to Settings.StateDir/logs/ID.log.
type managedContainer struct {
	dir     string
	logsDir string
	Meta    managedMeta
}

// managedMeta is meta.json.
type managedMeta struct {
	ID string `json:"id"`
	// Bundle is the user's bundle directory.
	Bundle string `json:"bundle"`
	// Lower is the base rootfs (the bundle's root.path, absolute).
	Lower string `json:"lower"`
}

func (mc *managedContainer) upper() string      { return filepath.Join(mc.dir, "upper") }
func (mc *managedContainer) rootfs() string     { return filepath.Join(mc.dir, "rootfs") }
func (mc *managedContainer) origConfig() string { return filepath.Join(mc.dir, "config.orig.json") }
func (mc *managedContainer) logPath() string    { return filepath.Join(mc.logsDir, mc.Meta.ID+".log") }

func (s *Service) managedDir(id string) string { return filepath.Join(s.set.StateDir, id) }

// loadManaged reads the state of a managed container.
func (s *Service) loadManaged(id string) (*managedContainer, error) {
	mc := &managedContainer{dir: s.managedDir(id), logsDir: filepath.Join(s.set.StateDir, "logs")}
	data, err := os.ReadFile(filepath.Join(mc.dir, "meta.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &mc.Meta); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(mc.dir, "meta.json"), err)
	}
	return mc, nil
}

// createManaged prepares the state directory of a new managed container
// (which runc must not know). A leftover directory of an earlier
// container with the same ID is replaced.
func (s *Service) createManaged(id, bundle, lower string, config []byte) (*managedContainer, error) {
	if strings.ContainsAny(lower, ",:\\") {
		return nil, invalid("the rootfs path %s contains ',', ':' or '\\', which overlayfs options cannot express; move the bundle", lower)
	}
	mc := &managedContainer{dir: s.managedDir(id), logsDir: filepath.Join(s.set.StateDir, "logs"),
		Meta: managedMeta{ID: id, Bundle: bundle, Lower: lower}}
	if _, err := os.Lstat(mc.dir); err == nil {
		mc.remove()
	}
	if err := os.MkdirAll(mc.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", mc.dir, err)
	}
	for _, sub := range []string{"upper", "work", "rootfs"} {
		if err := os.Mkdir(filepath.Join(mc.dir, sub), 0o755); err != nil {
			mc.remove()
			return nil, err
		}
	}
	derived, err := deriveConfig(config, mc.rootfs())
	if err != nil {
		mc.remove()
		return nil, err
	}
	meta, _ := json.MarshalIndent(mc.Meta, "", "  ")
	for name, data := range map[string][]byte{"config.json": derived, "config.orig.json": config, "meta.json": meta} {
		if err := os.WriteFile(filepath.Join(mc.dir, name), data, 0o600); err != nil {
			mc.remove()
			return nil, err
		}
	}
	return mc, nil
}

// deriveConfig points an OCI configuration at rootfs and adds a poststop
// hook that unmounts it when runc deletes the container. The cgroup path
// is dropped so that runc derives it from the container's own ID (clones
// must not share a cgroup).
func deriveConfig(config []byte, rootfs string) ([]byte, error) {
	var spec map[string]any
	if err := json.Unmarshal(config, &spec); err != nil {
		return nil, invalid("config.json is not valid JSON: %v", err)
	}
	root, _ := spec["root"].(map[string]any)
	if root == nil {
		root = map[string]any{}
		spec["root"] = root
	}
	root["path"] = rootfs
	if linux, ok := spec["linux"].(map[string]any); ok {
		delete(linux, "cgroupsPath")
	}
	hooks, _ := spec["hooks"].(map[string]any)
	if hooks == nil {
		hooks = map[string]any{}
		spec["hooks"] = hooks
	}
	post, _ := hooks["poststop"].([]any)
	hooks["poststop"] = append(post, map[string]any{
		"path": "/bin/sh",
		"args": []string{"sh", "-c", `umount "$0" 2>/dev/null; exit 0`, rootfs},
	})
	return json.MarshalIndent(spec, "", "\t")
}

// mount mounts the overlay rootfs, unless it is mounted already.
func (mc *managedContainer) mount() error {
	if overlayUpper(mc.rootfs()) == mc.upper() {
		return nil
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", mc.Meta.Lower, mc.upper(), filepath.Join(mc.dir, "work"))
	if err := unix.Mount("overlay", mc.rootfs(), "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount the container's overlay rootfs on %s: %w", mc.rootfs(), err)
	}
	return nil
}

// remove unmounts the rootfs and deletes the state directory. A rootfs
// that stays mounted (busy) is left alone rather than emptied through the
// mount.
func (mc *managedContainer) remove() {
	for i := 0; i < 4; i++ { // stacked mounts, if any
		if err := unix.Unmount(mc.rootfs(), unix.MNT_DETACH); err != nil {
			break
		}
	}
	if isMountPoint(mc.rootfs()) {
		return
	}
	_ = os.RemoveAll(mc.dir)
}

// isMountPoint reports whether something is mounted on dir.
func isMountPoint(dir string) bool {
	var st, pst unix.Stat_t
	if unix.Lstat(dir, &st) != nil || unix.Lstat(filepath.Dir(dir), &pst) != nil {
		return false
	}
	if st.Dev != pst.Dev {
		return true
	}
	return overlayUpper(dir) != "" // an overlay may share its parent's device number
}

// addNetnsHook makes the container's bundle restore cfg in its network
// namespace at restore (see netns.go).
func (mc *managedContainer) addNetnsHook(cfg *netnsConfig) error {
	hook, err := writeNetnsHook(cfg, mc.dir)
	if err != nil {
		return err
	}
	p := filepath.Join(mc.dir, "config.json")
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		return err
	}
	// Drop the hook of an earlier restore, then add this one.
	if hooks, ok := spec["hooks"].(map[string]any); ok {
		if pre, ok := hooks["prestart"].([]any); ok {
			kept := pre[:0]
			for _, h := range pre {
				if hm, ok := h.(map[string]any); ok && fmt.Sprint(hm["args"]) == fmt.Sprint(hook["args"]) {
					continue
				}
				kept = append(kept, h)
			}
			hooks["prestart"] = kept
		}
	}
	data, _ = json.Marshal(spec)
	out, err := addPrestartHook(data, hook)
	if err != nil {
		return err
	}
	return os.WriteFile(p, out, 0o600)
}
