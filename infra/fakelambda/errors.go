package fakelambda

import (
	"encoding/json"
	"net/http"
)

// functionError is the payload Lambda returns when a function fails.
type functionError struct {
	ErrorMessage string `json:"errorMessage"`
	ErrorType    string `json:"errorType"`
}

func errorPayload(typ, msg string) []byte {
	b, _ := json.Marshal(functionError{ErrorMessage: msg, ErrorType: typ}) // cannot fail: two strings
	return b
}

// parseError reads errorType and errorMessage from a function error payload.
func parseError(payload []byte) (typ, msg string) {
	var fe functionError
	if err := json.Unmarshal(payload, &fe); err != nil || fe.ErrorType == "" {
		return "Unhandled", string(payload)
	}
	return fe.ErrorType, fe.ErrorMessage
}

// apiError is an error of the Invoke API itself, shaped the way the AWS SDK
// decodes it: the type in X-Amzn-ErrorType, the message in the JSON body.
type apiError struct {
	status int
	typ    string
	msg    string
}

func (e apiError) write(w http.ResponseWriter, requestID string) {
	kind := "User"
	if e.status >= 500 {
		kind = "Service"
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-ErrorType", e.typ)
	w.Header().Set("X-Amzn-RequestId", requestID)
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(map[string]string{"Type": kind, "message": e.msg})
}
