package container

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// dockerAPIVersion is the Engine API version Cedana speaks: Docker 20.10's,
// which later engines still serve.
const dockerAPIVersion = "v1.41"

// defaultDockerHost is where the engine listens when DOCKER_HOST is unset.
const defaultDockerHost = "unix:///var/run/docker.sock"

// dockerClient talks to the Docker engine's HTTP API, over its unix
// socket or plain TCP, with nothing but net/http.
type dockerClient struct {
	host string // as given, for messages
	base string // URL prefix including the API version
	hc   *http.Client
}

// newDockerClient returns a client for host ("" = $DOCKER_HOST, else the
// default socket).
func newDockerClient(host string) (*dockerClient, error) {
	if host == "" {
		host = os.Getenv("DOCKER_HOST")
	}
	if host == "" {
		host = defaultDockerHost
	}
	c := &dockerClient{host: host}
	tr := &http.Transport{MaxIdleConns: 4, IdleConnTimeout: 30 * time.Second}
	switch {
	case strings.HasPrefix(host, "unix://"):
		sock := strings.TrimPrefix(host, "unix://")
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
		c.base = "http://docker/" + dockerAPIVersion
	case strings.HasPrefix(host, "tcp://"):
		c.base = "http://" + strings.TrimPrefix(host, "tcp://") + "/" + dockerAPIVersion
	default:
		return nil, invalid("unsupported Docker host %q: want unix:///path or tcp://host:port", host)
	}
	c.hc = &http.Client{Transport: tr}
	return c, nil
}

// apiError is an error response of the engine.
type apiError struct {
	Status  int
	Message string
}

func (e *apiError) Error() string { return e.Message }

func isStatus(err error, code int) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.Status == code
}

// do sends a request with an optional JSON body and decodes a JSON reply
// into out (when out is not nil).
func (c *dockerClient) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: cannot reach the Docker engine at %s (%v); start dockerd, or point DOCKER_HOST / --docker-host at it",
			ErrUnavailable, c.host, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var m struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(data, &m) != nil || m.Message == "" {
			m.Message = strings.TrimSpace(string(data))
		}
		if m.Message == "" {
			m.Message = resp.Status
		}
		return &apiError{Status: resp.StatusCode, Message: m.Message}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode Docker's reply to %s %s: %w", method, path, err)
		}
	}
	return nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// dockerInfo is the part of GET /info Cedana uses.
type dockerInfo struct {
	ServerVersion     string
	DockerRootDir     string
	Driver            string
	ExperimentalBuild bool
}

// dockerContainer is the part of GET /containers/ID/json Cedana reads.
// The whole document travels in the archive as is.
type dockerContainer struct {
	ID    string `json:"Id"`
	Name  string
	Image string // the image ID
	State struct {
		Status     string
		Running    bool
		Paused     bool
		Restarting bool
		Pid        int
	}
	Config struct {
		Image string // the image reference the container was created from
	}
	GraphDriver struct {
		Name string
		Data map[string]string
	}
	NetworkSettings struct {
		Networks map[string]dockerEndpoint
	}
}

type dockerEndpoint struct {
	IPAddress         string
	GlobalIPv6Address string
	Aliases           []string
}

// inspect returns a container's parsed and raw inspect documents.
func (c *dockerClient) inspect(ctx context.Context, id string) (*dockerContainer, []byte, error) {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/containers/"+url.PathEscape(id)+"/json", nil, nil, &raw); err != nil {
		return nil, nil, err
	}
	var dc dockerContainer
	if err := json.Unmarshal(raw, &dc); err != nil {
		return nil, nil, fmt.Errorf("decode container %s: %w", id, err)
	}
	return &dc, raw, nil
}

func (c *dockerClient) info(ctx context.Context) (*dockerInfo, error) {
	var in dockerInfo
	return &in, c.do(ctx, http.MethodGet, "/info", nil, nil, &in)
}
