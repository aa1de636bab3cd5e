package fakelambda

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// tailBytes is how much of the log X-Amz-Log-Type: Tail returns.
const tailBytes = 4096

// invokeName is the Invoke API's FunctionName pattern: a name, a partial
// ARN or an ARN, optionally with a qualifier.
var invokeName = regexp.MustCompile(`^(?:arn:aws[a-zA-Z-]*:lambda:)?(?:[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d:)?(?:\d{12}:)?(?:function:)?([a-zA-Z0-9_.-]{1,64})(?::(\$LATEST|[a-zA-Z0-9_-]+))?$`)

// functionName is what CreateFunction accepts as a name.
var functionName = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

func (e *Emulator) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /2015-03-31/functions/{name}/invocations", e.handleInvoke)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apiError{http.StatusNotFound, "UnknownOperationException", "Unknown operation " + r.Method + " " + r.URL.Path}.
			write(w, newRequestID())
	})
	return mux
}

// statusRecorder remembers the status for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (e *Emulator) handleInvoke(w http.ResponseWriter, r *http.Request) {
	id := newRequestID()
	typ := InvocationType(r.Header.Get("X-Amz-Invocation-Type"))
	if typ == "" {
		typ = RequestResponse
	}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	e.invoke(rec, r, id, typ)

	e.mu.Lock()
	e.requests = append(e.requests, Request{
		Time:      time.Now(),
		RequestID: id,
		Function:  r.PathValue("name"),
		Type:      typ,
		Status:    rec.status,
	})
	e.mu.Unlock()
}

func (e *Emulator) invoke(w http.ResponseWriter, r *http.Request, id string, typ InvocationType) {
	fn, apiErr := e.lookup(r.PathValue("name"), r.URL.Query().Get("Qualifier"))
	if apiErr != nil {
		apiErr.write(w, id)
		return
	}
	limit := e.opts.MaxSyncPayload
	switch typ {
	case RequestResponse, DryRun:
	case Event:
		limit = e.opts.MaxEventPayload
	default:
		apiError{http.StatusBadRequest, "InvalidParameterValueException",
			fmt.Sprintf("Unsupported invocation type %q", typ)}.write(w, id)
		return
	}
	payload, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	if err != nil {
		apiError{http.StatusBadRequest, "InvalidRequestContentException", "read request body: " + err.Error()}.write(w, id)
		return
	}
	if len(payload) > limit {
		apiError{http.StatusRequestEntityTooLarge, "RequestTooLargeException",
			fmt.Sprintf("Request must be smaller than %d bytes for the InvokeFunction operation", limit)}.write(w, id)
		return
	}
	if len(payload) > 0 && !json.Valid(payload) {
		apiError{http.StatusBadRequest, "InvalidRequestContentException",
			"Could not parse request body into json: invalid JSON"}.write(w, id)
		return
	}

	if typ == DryRun {
		w.Header().Set("X-Amzn-RequestId", id)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if !e.begin() {
		apiError{http.StatusServiceUnavailable, "ServiceException", "lambda emulator is closing"}.write(w, id)
		return
	}
	if typ == Event {
		go e.runEvent(fn, id, payload)
		w.Header().Set("X-Amzn-RequestId", id)
		w.WriteHeader(http.StatusAccepted)
		return
	}
	defer e.end()

	// Real Lambda keeps running a function whose caller went away, so the
	// attempt is not tied to the request's context.
	inv, err := e.run(fn, id, RequestResponse, 1, payload, r.Header.Get("X-Amz-Client-Context"))
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, errClosed) {
			status = http.StatusServiceUnavailable
		}
		apiError{status, "ServiceException", err.Error()}.write(w, id)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-RequestId", id)
	w.Header().Set("X-Amz-Executed-Version", "$LATEST")
	if inv.Failed() {
		w.Header().Set("X-Amz-Function-Error", "Unhandled")
	}
	if strings.EqualFold(r.Header.Get("X-Amz-Log-Type"), "Tail") {
		w.Header().Set("X-Amz-Log-Result", logTail(inv.Logs))
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(inv.Result)
}

// lookup resolves the FunctionName path parameter. Only $LATEST exists.
func (e *Emulator) lookup(name, qualifier string) (*function, *apiError) {
	m := invokeName.FindStringSubmatch(name)
	if m == nil {
		return nil, &apiError{http.StatusBadRequest, "ValidationException",
			fmt.Sprintf("1 validation error detected: Value '%s' at 'functionName' failed to satisfy constraint", name)}
	}
	if m[2] != "" {
		if qualifier != "" && qualifier != m[2] {
			return nil, &apiError{http.StatusBadRequest, "InvalidParameterValueException",
				"The derived qualifier from the function name does not match the specified qualifier."}
		}
		qualifier = m[2]
	}
	arn := fmt.Sprintf("arn:aws:lambda:%s:%s:function:%s", e.opts.Region, e.opts.AccountID, m[1])
	fn := e.funcs[m[1]]
	if qualifier != "" && qualifier != "$LATEST" {
		arn += ":" + qualifier
		fn = nil
	}
	if fn == nil {
		return nil, &apiError{http.StatusNotFound, "ResourceNotFoundException", "Function not found: " + arn}
	}
	return fn, nil
}

// logTail is X-Amz-Log-Result: the last 4 KB of the log, base64-encoded.
func logTail(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	s := b.String()
	if len(s) > tailBytes {
		s = s[len(s)-tailBytes:]
	}
	return base64.StdEncoding.EncodeToString([]byte(s))
}
