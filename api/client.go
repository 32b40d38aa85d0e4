package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client calls the server. Set Token for admin calls; give the
// http.Client a client certificate for agent calls.
type Client struct {
	// Base is the server's URL, "https://host:port".
	Base  string
	Token string
	HTTP  *http.Client
}

// HTTPError is a non-2xx answer.
type HTTPError struct {
	Status int
	Body   Error
}

func (e *HTTPError) Error() string {
	if e.Body.Error != "" {
		return fmt.Sprintf("server: %s (%d %s)", e.Body.Error, e.Status, e.Body.Code)
	}
	return fmt.Sprintf("server: HTTP %d", e.Status)
}

// StatusOf is the HTTP status of an error from Do, or 0.
func StatusOf(err error) int {
	var he *HTTPError
	if errors.As(err, &he) {
		return he.Status
	}
	return 0
}

// Do sends in (JSON, unless it is []byte or nil) and decodes a JSON answer
// into out (unless out is nil). It returns whether the server answered 204.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) (noContent bool, err error) {
	var body io.Reader
	ctype := ""
	switch v := in.(type) {
	case nil:
	case []byte:
		body, ctype = bytes.NewReader(v), "application/octet-stream"
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return false, err
		}
		body, ctype = bytes.NewReader(b), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.Base, "/")+path, body)
	if err != nil {
		return false, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		he := &HTTPError{Status: resp.StatusCode}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
		if json.Unmarshal(data, &he.Body) != nil {
			he.Body.Error = strings.TrimSpace(string(data))
		}
		return false, he
	}
	if resp.StatusCode == http.StatusNoContent {
		return true, nil
	}
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return false, nil
	}
	if b, ok := out.(*[]byte); ok {
		*b, err = io.ReadAll(resp.Body)
		return false, err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return false, fmt.Errorf("decode answer to %s %s: %w", method, path, err)
	}
	return false, nil
}

// Q escapes a path segment.
func Q(s string) string { return url.PathEscape(s) }

// Fingerprint is the hex SHA-256 of a certificate's DER bytes: how
// agents are recognized and how a CA is pinned.
func Fingerprint(der []byte) string {
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:])
}

// NormalizeFingerprint accepts hex with or without colons, any case.
func NormalizeFingerprint(s string) string {
	s = strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	return strings.TrimPrefix(s, "sha256")
}

// ParseCertsPEM reads every certificate in PEM data.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no certificate in PEM data")
	}
	return out, nil
}

// TLSConfig trusts exactly the CA in caPEM, with an optional client
// certificate.
func TLSConfig(caPEM []byte, cert *tls.Certificate) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no CA certificate in the given PEM")
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg, nil
}

// HTTPClient makes a client for a TLS configuration. Timeout bounds
// each whole request; long polls pass their own deadline.
func HTTPClient(cfg *tls.Config, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}
