package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A Setting is one leaf of the configuration: its key in files, its
// environment variable, and the one parser every source goes through.
type Setting struct {
	// Key is the JSON path, e.g. "daemon.metrics_addr".
	Key string
	// Env is the environment variable, e.g. "CEDANA_DAEMON_METRICS_ADDR".
	Env string
	// Kind names the values it takes: string, bool, int, size, duration,
	// or "one of a, b, c".
	Kind string

	index []int
	parse func(string) (reflect.Value, error)
}

// Settings lists every setting of Config, in declaration order.
func Settings() []Setting {
	var out []Setting
	collect(reflect.TypeOf(Config{}), nil, "", "CEDANA", &out)
	return out
}

// lookup finds the setting with key in ss.
func lookup(ss []Setting, key string) (Setting, bool) {
	for _, s := range ss {
		if s.Key == key {
			return s, true
		}
	}
	return Setting{}, false
}

// Lookup returns the setting with key.
func Lookup(key string) (Setting, bool) { return lookup(Settings(), key) }

var durationType = reflect.TypeOf(Duration{})

func collect(t reflect.Type, index []int, keyPrefix, envPrefix string, out *[]Setting) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		idx := append(append([]int(nil), index...), i)
		key, env := keyPrefix+name, envPrefix+"_"+strings.ToUpper(name)
		if f.Type.Kind() == reflect.Struct && f.Type != durationType {
			collect(f.Type, idx, key+".", env, out)
			continue
		}
		kind, parse := parserFor(f)
		*out = append(*out, Setting{Key: key, Env: env, Kind: kind, index: idx, parse: parse})
	}
}

// parserFor returns the parser of a field: by its type, refined by its
// `setting` tag ("off": the word off means empty; "enum=a,b": one of
// those, or empty).
func parserFor(f reflect.StructField) (string, func(string) (reflect.Value, error)) {
	tag := f.Tag.Get("setting")
	switch {
	case f.Type == durationType:
		return "duration", func(s string) (reflect.Value, error) {
			d, err := ParseDuration(s)
			return reflect.ValueOf(Duration{d}), err
		}
	case f.Type.Kind() == reflect.Bool:
		return "bool", func(s string) (reflect.Value, error) {
			b, err := strconv.ParseBool(strings.TrimSpace(s))
			if err != nil {
				return reflect.Value{}, fmt.Errorf("want true or false")
			}
			return reflect.ValueOf(b), nil
		}
	case f.Type.Kind() == reflect.Int:
		return "int", func(s string) (reflect.Value, error) {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				return reflect.Value{}, fmt.Errorf("want a whole number")
			}
			return reflect.ValueOf(n), nil
		}
	case f.Type.Kind() == reflect.Int64:
		return "size", func(s string) (reflect.Value, error) {
			n, err := ParseSize(s)
			return reflect.ValueOf(n), err
		}
	case tag == "off":
		return "string, or off", func(s string) (reflect.Value, error) {
			if strings.EqualFold(strings.TrimSpace(s), "off") {
				s = ""
			}
			return reflect.ValueOf(s), nil
		}
	case strings.HasPrefix(tag, "enum="):
		allowed := strings.Split(strings.TrimPrefix(tag, "enum="), ",")
		return "one of " + strings.Join(allowed, ", "), func(s string) (reflect.Value, error) {
			if s == "" {
				return reflect.ValueOf(s), nil
			}
			for _, a := range allowed {
				if s == a {
					return reflect.ValueOf(s), nil
				}
			}
			return reflect.Value{}, fmt.Errorf("want %s", strings.Join(allowed, ", "))
		}
	}
	return "string", func(s string) (reflect.Value, error) { return reflect.ValueOf(s), nil }
}

// Check parses value as the setting would, without applying it.
func (s Setting) Check(value string) error {
	_, err := s.parse(value)
	return err
}

func (s Setting) set(c *Config, value string) error {
	v, err := s.parse(value)
	if err != nil {
		return err
	}
	reflect.ValueOf(c).Elem().FieldByIndex(s.index).Set(v)
	return nil
}

// Get returns the setting's current value in c, as text.
func (s Setting) Get(c *Config) string {
	v := reflect.ValueOf(c).Elem().FieldByIndex(s.index).Interface()
	if d, ok := v.(Duration); ok {
		return d.String()
	}
	return fmt.Sprint(v)
}

// ParseDuration reads "10s", "1m30s", or a plain number of seconds.
func ParseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if secs, err := strconv.ParseFloat(t, 64); err == nil {
		if secs < 0 || secs > float64(1<<63-1)/float64(time.Second) {
			return 0, fmt.Errorf("want a duration such as 10s, not %q", s)
		}
		return time.Duration(secs * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("want a duration such as 10s, not %q", s)
	}
	return d, nil
}

// An Override is a setting given on the command line.
type Override struct {
	// Key is the setting's key, e.g. "daemon.metrics_addr".
	Key string
	// Value is the text as given.
	Value string
	// Flag names the flag, for messages ("--metrics-addr").
	Flag string
}

// Source names where the override came from.
func (o Override) Source() string {
	if o.Flag != "" {
		return o.Flag
	}
	return "override " + o.Key
}

// applyEnv applies CEDANA_* variables and returns their names.
func applyEnv(c *Config, set []Setting, env []string) ([]string, error) {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, "CEDANA_") {
			vars[k] = v
		}
	}
	var applied []string
	for _, s := range set {
		v, ok := vars[s.Env]
		if !ok {
			continue
		}
		if err := s.set(c, v); err != nil {
			return nil, fmt.Errorf("environment variable %s=%q: %w", s.Env, v, err)
		}
		applied = append(applied, s.Env)
	}
	return applied, nil
}

// applyFile overlays one JSON document on c. It walks the document's
// tokens, so that every error can name the line and column, refuses
// unknown keys, and hands every value, as text, to its setting's parser.
func applyFile(c *Config, set []Setting, data []byte) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	w := &fileWalker{data: data, dec: json.NewDecoder(bytes.NewReader(data)), c: c, set: set}
	w.dec.UseNumber()
	tok, err := w.dec.Token()
	if err != nil {
		return w.syntax(err)
	}
	if tok != json.Delim('{') {
		return w.errorf("invalid JSON: the configuration must be a JSON object")
	}
	if err := w.object(reflect.TypeOf(Config{}), ""); err != nil {
		return err
	}
	if _, err := w.dec.Token(); err != io.EOF {
		if err != nil {
			return w.syntax(err)
		}
		return w.errorf("invalid JSON: more after the configuration's closing brace")
	}
	return nil
}

type fileWalker struct {
	data []byte
	dec  *json.Decoder
	c    *Config
	set  []Setting
}

func (w *fileWalker) errorf(format string, a ...any) error {
	line, col := position(w.data, w.dec.InputOffset())
	return fmt.Errorf("line %d, column %d: %s", line, col, fmt.Sprintf(format, a...))
}

func (w *fileWalker) syntax(err error) error {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		line, col := position(w.data, syn.Offset)
		return fmt.Errorf("invalid JSON at line %d, column %d: %v", line, col, syn)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		line, col := position(w.data, int64(len(w.data)))
		return fmt.Errorf("invalid JSON at line %d, column %d: unexpected end", line, col)
	}
	return fmt.Errorf("invalid JSON: %v", err)
}

// object reads the members of an object (its '{' already read) whose
// fields are those of t.
func (w *fileWalker) object(t reflect.Type, prefix string) error {
	fields := jsonFields(t)
	for w.dec.More() {
		tok, err := w.dec.Token()
		if err != nil {
			return w.syntax(err)
		}
		name, _ := tok.(string)
		f, ok := fields[name]
		if !ok {
			return w.errorf("unknown key %q (known keys here: %s)", prefix+name, strings.Join(sortedKeys(fields), ", "))
		}
		key := prefix + name
		tok, err = w.dec.Token()
		if err != nil {
			return w.syntax(err)
		}
		if f.Type.Kind() == reflect.Struct && f.Type != durationType {
			if tok != json.Delim('{') {
				return w.errorf("key %q wants an object of keys (%s)", key, strings.Join(sortedKeys(jsonFields(f.Type)), ", "))
			}
			if err := w.object(f.Type, key+"."); err != nil {
				return err
			}
			continue
		}
		var text string
		switch v := tok.(type) {
		case nil:
			continue // null: keep the value from before
		case string:
			text = v
		case json.Number:
			text = v.String()
		case bool:
			text = strconv.FormatBool(v)
		default:
			return w.errorf("key %q wants a single value, not a JSON object or array", key)
		}
		s, _ := lookup(w.set, key)
		if err := s.set(w.c, text); err != nil {
			return w.errorf("key %q: %v", key, err)
		}
	}
	if _, err := w.dec.Token(); err != nil { // '}'
		return w.syntax(err)
	}
	return nil
}

func jsonFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out[name] = f
		}
	}
	return out
}

func sortedKeys(m map[string]reflect.StructField) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func position(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line = 1 + bytes.Count(data[:off], []byte("\n"))
	col = int(off) - bytes.LastIndexByte(data[:off], '\n')
	return line, col
}
