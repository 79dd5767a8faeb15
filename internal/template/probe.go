package template

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Probe says when a clone is ready: "tcp:PORT" (a connection is
// accepted), "http:PATH" or "http:URL" (a GET answers with a status below
// 500) or "file:PATH" (the file exists).
type Probe struct {
	Kind string // tcp, http or file
	Port int    // tcp; http when given in the URL
	Path string // http: the URL path (with query); file: the file
	Raw  string
}

// ParseProbe parses a probe; "" is no probe.
func ParseProbe(s string) (*Probe, error) {
	if s == "" {
		return nil, nil
	}
	kind, arg, ok := strings.Cut(s, ":")
	bad := func(why string) error {
		return fmt.Errorf("%w: probe %q: %s (use tcp:PORT, http:/PATH, http:http://HOST:PORT/PATH or file:PATH)", ErrInvalid, s, why)
	}
	if !ok || arg == "" {
		return nil, bad("missing argument")
	}
	p := &Probe{Kind: kind, Raw: s}
	switch kind {
	case "tcp":
		port, err := strconv.Atoi(arg)
		if err != nil || port <= 0 || port > 65535 {
			return nil, bad("not a port")
		}
		p.Port = port
	case "http":
		if strings.HasPrefix(arg, "/") {
			p.Path = arg
			break
		}
		u, err := url.Parse(arg)
		if err != nil || u.Scheme != "http" || u.Host == "" {
			return nil, bad("not a path or an http:// URL")
		}
		if ps := u.Port(); ps != "" {
			p.Port, _ = strconv.Atoi(ps)
		} else {
			p.Port = 80
		}
		p.Path = u.RequestURI()
	case "file":
		p.Path = arg
	default:
		return nil, bad("unknown kind " + kind)
	}
	return p, nil
}

// Wait polls until the probe succeeds against a clone reachable at host
// ("" is 127.0.0.1); defaultPort is used by an http probe without a port.
func (p *Probe) Wait(ctx context.Context, host string, defaultPort int) error {
	if host == "" {
		host = "127.0.0.1"
	}
	port := p.Port
	if port == 0 {
		port = defaultPort
	}
	if p.Kind != "file" && port == 0 {
		return fmt.Errorf("%w: probe %q names no port and the template listens on none", ErrInvalid, p.Raw)
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for {
		switch p.Kind {
		case "tcp":
			d := net.Dialer{Timeout: time.Second}
			if c, err := d.DialContext(ctx, "tcp", addr); err == nil {
				c.Close()
				return nil
			}
		case "http":
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+p.Path, nil)
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode < 500 {
					return nil
				}
			}
		case "file":
			if _, err := os.Stat(p.Path); err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready (%s) before the deadline: %w", p.Raw, ctx.Err())
		case <-time.After(3 * time.Millisecond):
		}
	}
}
