package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"filippo.io/age"
)

// Key is an encryption key: an age X25519 identity. Archives are encrypted to its public
// half and decrypted with it. Its String and GoString never show the secret, so a Key
// that ends up in a log line or an error leaks nothing.
type Key struct {
	id *age.X25519Identity
}

// String describes the key by its public half.
func (k *Key) String() string {
	if k == nil || k.id == nil {
		return "age key (none)"
	}
	return "age key " + k.id.Recipient().String()
}

// GoString is String: %#v must not print the secret either.
func (k *Key) GoString() string { return k.String() }

// Recipient is the key's public half ("age1…"), safe to show.
func (k *Key) Recipient() string { return k.id.Recipient().String() }

// KeyGen creates a new key file at path with mode 0600 and returns its public half. It
// refuses to overwrite an existing file: losing a key loses every archive encrypted with
// it. (`cedana storage keygen FILE` calls it.)
func KeyGen(path string) (string, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("key file %s already exists; refusing to overwrite it (archives encrypted with it could no longer be restored): %w", path, err)
		}
		return "", fmt.Errorf("create key file: %w", err)
	}
	content := fmt.Sprintf("# Cedana storage encryption key (age X25519), created %s\n# public key: %s\n%s\n",
		time.Now().UTC().Format(time.RFC3339), id.Recipient(), id)
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("write key file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("write key file: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("write key file: %w", err)
	}
	return id.Recipient().String(), nil
}

// LoadKey reads a key file made by KeyGen (or by age-keygen). The file must not be
// readable by group or others. Errors wrap ErrNoKey; they never contain the key.
func LoadKey(path string) (*Key, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: storage.encryption.key_file is empty", ErrNoKey)
	}
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: key file %s does not exist (create one with `cedana storage keygen %s`, or restore the one the archives were written with)", ErrNoKey, path, path)
		}
		return nil, fmt.Errorf("%w: %w", ErrNoKey, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: key file %s has mode %04o, readable by others (run `chmod 600 %s`)", ErrNoKey, path, st.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoKey, err)
	}
	var id *age.X25519Identity
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if id != nil {
			return nil, fmt.Errorf("%w: key file %s holds more than one key", ErrNoKey, path)
		}
		id, err = age.ParseX25519Identity(line)
		if err != nil {
			// age's message may quote the line: do not pass it on.
			return nil, fmt.Errorf("%w: key file %s does not hold an age X25519 key (AGE-SECRET-KEY-1…)", ErrNoKey, path)
		}
	}
	if id == nil {
		return nil, fmt.Errorf("%w: key file %s holds no key", ErrNoKey, path)
	}
	return &Key{id: id}, nil
}
