// Package console is the web console `lifeboat server` serves at /: the
// operators' pages (overview, protection, recovery, jobs, tapes, alerts)
// rendered from templates and assets embedded in the binary, so it needs
// no CDN and no internet at run time.
//
// The console is a client of the server's own JSON API: every page reads
// and every button acts through the API handler, called in process with
// the admin token the operator logged in with. Whatever the console can
// do, the API (and so the CLI) can do the same way.
//
// Login takes the admin token once and answers with a session cookie
// (HttpOnly, Secure, SameSite=Strict). Every state-changing request needs
// the session's CSRF token (a form field, or the X-CSRF-Token header the
// script sends) and must come from this origin.
package console

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"lifeboat/api"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

const (
	cookieName = "lifeboat_session"
	csrfField  = "csrf"
	csrfHeader = "X-CSRF-Token"
	// apiPrefix is where the console's script reaches the API, through
	// the session instead of a bearer token.
	apiPrefix = "/console" + api.Prefix + "/"
	// maxSessions bounds the session map: logins past it push out the
	// session closest to expiry.
	maxSessions = 1000
)

// Options are what the console needs from the server.
type Options struct {
	// API is the server's API handler; the console calls it in process.
	API http.Handler
	// CheckToken compares a token with the admin token in constant time.
	CheckToken func(string) bool
	// NotFound answers unknown paths under /api/ (the API's JSON 404).
	NotFound http.Handler
	// SessionTTL is how long a login lasts (default 12h).
	SessionTTL time.Duration
	Version    string
	Log        *slog.Logger
	// Now is the clock (time.Now by default).
	Now func() time.Time
}

// Console serves the web console.
type Console struct {
	opt   Options
	mux   *http.ServeMux
	pages map[string]*template.Template

	mu       sync.Mutex
	sessions map[string]*session
}

type session struct {
	// token is the admin token the operator logged in with: the console's
	// API calls carry it, so a changed admin token ends the session.
	token   string
	csrf    string
	expires time.Time
	// flash is a one-time message for the next page.
	flash, flashKind string
}

// New builds the console.
func New(opt Options) (*Console, error) {
	if opt.API == nil || opt.CheckToken == nil {
		return nil, errors.New("console: API handler and token check are required")
	}
	if opt.SessionTTL <= 0 {
		opt.SessionTTL = 12 * time.Hour
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.NotFound == nil {
		opt.NotFound = http.NotFoundHandler()
	}
	c := &Console{opt: opt, sessions: map[string]*session{}}
	var err error
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	c.routes()
	return c, nil
}

func (c *Console) routes() {
	m := http.NewServeMux()
	c.mux = m
	static, _ := fs.Sub(staticFS, "static")
	m.Handle("GET /static/", http.StripPrefix("/static/", cacheStatic(http.FileServerFS(static))))
	m.HandleFunc("GET /login", c.loginPage)
	m.HandleFunc("POST /login", c.login)
	m.Handle("POST /logout", c.auth(c.logout))
	m.Handle("/console/api/", c.authAPI(c.proxy))

	m.Handle("GET /{$}", c.auth(c.overview))
	m.Handle("GET /protection", c.auth(c.protection))
	m.Handle("GET /protection/new", c.auth(c.groupWizard))
	m.Handle("POST /protection/new", c.auth(c.createGroup))
	m.Handle("GET /protection/{group}", c.auth(c.groupPage))
	m.Handle("POST /protection/{group}/members", c.auth(c.addMembers))
	m.Handle("POST /protection/{group}/members/{vm}/remove", c.auth(c.removeMember))
	m.Handle("POST /protection/{group}/settings", c.auth(c.groupSettings))
	m.Handle("POST /protection/{group}/run", c.auth(c.runGroup))
	m.Handle("POST /backup", c.auth(c.backupNow))
	m.Handle("GET /recovery", c.auth(c.recovery))
	m.Handle("GET /recovery/items", c.auth(c.items))
	m.Handle("GET /jobs", c.auth(c.jobs))
	m.Handle("GET /jobs/{id}", c.auth(c.job))
	m.Handle("POST /jobs/{id}/cancel", c.auth(c.cancelJob))
	m.Handle("GET /tapes", c.auth(c.tapes))
	m.Handle("GET /alerts", c.auth(c.alerts))
	m.Handle("POST /alerts/{id}/ack", c.auth(c.ackAlert))
	m.Handle("/", c.auth(c.notFound))
}

// ServeHTTP answers every path the API does not: console pages, and the
// API's JSON 404 for unknown /api/ paths.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/api" || strings.HasPrefix(r.URL.Path, "/api/") || r.URL.Path == "/metrics" {
		c.opt.NotFound.ServeHTTP(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "+
		"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	c.mux.ServeHTTP(w, r)
}

func cacheStatic(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=300")
		next.ServeHTTP(w, r)
	})
}

// ---- sessions ------------------------------------------------------------------

type ctxKey struct{}

func sessionOf(r *http.Request) *session {
	s, _ := r.Context().Value(ctxKey{}).(*session)
	return s
}

func randomID() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("console: no randomness: %v", err)) // crypto/rand does not fail on supported systems
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// lookup finds the request's live session and its ID.
func (c *Console) lookup(r *http.Request) (string, *session) {
	ck, err := r.Cookie(cookieName)
	if err != nil || len(ck.Value) != 43 {
		return "", nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sessions[ck.Value]
	if !ok {
		return "", nil
	}
	if c.opt.Now().After(s.expires) {
		delete(c.sessions, ck.Value)
		return "", nil
	}
	return ck.Value, s
}

func (c *Console) newSession(token string) (string, *session) {
	now := c.opt.Now()
	s := &session{token: token, csrf: randomID(), expires: now.Add(c.opt.SessionTTL)}
	id := randomID()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, v := range c.sessions {
		if now.After(v.expires) {
			delete(c.sessions, k)
		}
	}
	for len(c.sessions) >= maxSessions {
		var oldest string
		for k, v := range c.sessions {
			if oldest == "" || v.expires.Before(c.sessions[oldest].expires) {
				oldest = k
			}
		}
		delete(c.sessions, oldest)
	}
	c.sessions[id] = s
	return id, s
}

func (c *Console) dropSession(id string) {
	c.mu.Lock()
	delete(c.sessions, id)
	c.mu.Unlock()
}

func (c *Console) setFlash(s *session, kind, msg string) {
	c.mu.Lock()
	s.flash, s.flashKind = msg, kind
	c.mu.Unlock()
}

func (c *Console) takeFlash(s *session) (kind, msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kind, msg = s.flashKind, s.flash
	s.flash, s.flashKind = "", ""
	return kind, msg
}

// sameOrigin refuses a state-changing request a browser sent from another
// site: Sec-Fetch-Site, Origin and Referer must, where given, name this
// host. Browsers send at least one of them with every POST.
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		return err == nil && u.Host == r.Host
	}
	if ref := r.Header.Get("Referer"); ref != "" {
		u, err := url.Parse(ref)
		return err == nil && u.Host == r.Host
	}
	return false
}

func safeMethod(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// csrfOK checks a state-changing request's token and origin.
func csrfOK(r *http.Request, s *session) bool {
	if safeMethod(r.Method) {
		return true
	}
	if !sameOrigin(r) {
		return false
	}
	tok := r.Header.Get(csrfHeader)
	if tok == "" {
		tok = r.PostFormValue(csrfField)
	}
	return tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.csrf)) == 1
}

// auth admits a page request with a live session and, for POSTs, a valid
// CSRF token; without a session it sends the browser to /login.
func (c *Console) auth(next func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, s := c.lookup(r)
		if s == nil {
			if !safeMethod(r.Method) {
				http.Error(w, "not logged in", http.StatusForbidden)
				return
			}
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if !safeMethod(r.Method) {
			r.Body = http.MaxBytesReader(w, r.Body, api.MaxBody)
		}
		if !csrfOK(r, s) {
			c.opt.Log.Warn("console: refused a cross-site or tokenless request", "method", r.Method, "path", r.URL.Path,
				"origin", r.Header.Get("Origin"), "remote", r.RemoteAddr)
			http.Error(w, "refused: this request did not come from a console page (CSRF check)", http.StatusForbidden)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		next(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, s)), s)
	})
}

// authAPI is auth for the script's API calls: JSON errors, no redirects.
func (c *Console) authAPI(next func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, s := c.lookup(r)
		if s == nil {
			jsonError(w, http.StatusUnauthorized, "unauthorized", "log in to the console first")
			return
		}
		if !csrfOK(r, s) {
			jsonError(w, http.StatusForbidden, "forbidden", "refused: missing or wrong CSRF token, or another site's request")
			return
		}
		next(w, r, s)
	})
}

func jsonError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintf(w, "{\"error\":%q,\"code\":%q}\n", msg, code)
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, s := c.lookup(r); s != nil {
		http.Redirect(w, r, localNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	c.render(w, r, http.StatusOK, "login", nil, map[string]any{"Next": localNext(r.URL.Query().Get("next"))})
}

// localNext keeps a post-login redirect on this site.
func localNext(n string) string {
	if !strings.HasPrefix(n, "/") || strings.HasPrefix(n, "//") || strings.HasPrefix(n, "/\\") || strings.HasPrefix(n, "/login") {
		return "/"
	}
	return n
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if !sameOrigin(r) {
		http.Error(w, "refused: the login form must be sent from this site", http.StatusForbidden)
		return
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	next := localNext(r.PostFormValue("next"))
	if tok == "" || !c.opt.CheckToken(tok) {
		c.opt.Log.Warn("console: login refused", "remote", r.RemoteAddr)
		c.render(w, r, http.StatusUnauthorized, "login", nil, map[string]any{"Next": next,
			"Error": "That is not the admin token. It is in the server's data folder: admin-token."})
		return
	}
	id, s := c.newSession(tok)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, Expires: s.expires})
	c.opt.Log.Info("console: login", "remote", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	if id, _ := c.lookup(r); id != "" {
		c.dropSession(id)
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// ---- the API, in process -----------------------------------------------------

// proxy passes the script's /console/api/v1/… calls to the API as the
// session's admin. Agent endpoints are not reachable this way.
func (c *Console) proxy(w http.ResponseWriter, r *http.Request, s *session) {
	p := strings.TrimPrefix(r.URL.Path, "/console")
	if strings.HasPrefix(p, api.Prefix+"/agent/") || p == api.Prefix+"/enroll" {
		jsonError(w, http.StatusForbidden, "forbidden", "agent endpoints are not for the console")
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path, r2.URL.RawPath = p, ""
	r2.RequestURI = r2.URL.RequestURI()
	r2.Header.Del("Cookie")
	r2.Header.Del(csrfHeader)
	r2.Header.Set("Authorization", "Bearer "+s.token)
	c.opt.API.ServeHTTP(w, r2)
}

// client is an API client whose calls run the API handler in process.
func (c *Console) client(s *session) *api.Client {
	return &api.Client{Base: "https://console.invalid", Token: s.token, HTTP: &http.Client{Transport: inProcess{c.opt.API}}}
}

// inProcess is an http.RoundTripper that serves a request with a handler.
type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	if r.Body == nil {
		r.Body = http.NoBody
	}
	r.RequestURI = r.URL.RequestURI()
	r.RemoteAddr = "console"
	rec := &recorder{header: http.Header{}}
	t.h.ServeHTTP(rec, r)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return &http.Response{
		Status: fmt.Sprintf("%d %s", rec.status, http.StatusText(rec.status)), StatusCode: rec.status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: rec.header, Body: io.NopCloser(&rec.body), ContentLength: int64(rec.body.Len()), Request: req,
	}, nil
}

// recorder buffers a handler's answer (the console reads small JSON).
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}
