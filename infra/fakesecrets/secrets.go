// Package fakesecrets is a stand-in, for tests and local runs, for the two AWS
// stores the functions read their tokens from: Secrets Manager
// (GetSecretValue) and SSM Parameter Store (GetParameter). Both speak AWS's
// JSON 1.1 protocol on one loopback port; point aws-sdk-go-v2 at it with
// AWS_ENDPOINT_URL_SECRETS_MANAGER and AWS_ENDPOINT_URL_SSM.
//
// It answers no other operation, and has no secret versions, rotation,
// encryption keys or IAM.
package fakesecrets

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
)

// Store holds secrets and parameters by name.
type Store struct {
	mu         sync.Mutex
	secrets    map[string]string
	parameters map[string]string
	reads      int
	srv        *http.Server
	url        string
}

// New returns an empty store.
func New() *Store {
	return &Store{secrets: map[string]string{}, parameters: map[string]string{}}
}

// PutSecret stores a Secrets Manager secret.
func (s *Store) PutSecret(name, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets[name] = value
}

// PutParameter stores an SSM SecureString parameter.
func (s *Store) PutParameter(name, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.parameters[name] = value
}

// Reads counts the values handed out.
func (s *Store) Reads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// Start serves on 127.0.0.1 with a random port and returns the URL.
func (s *Store) Start() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	s.srv = &http.Server{Handler: s}
	go s.srv.Serve(ln)
	s.url = "http://" + ln.Addr().String()
	return s.url, nil
}

// Close stops the server.
func (s *Store) Close() error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

func (s *Store) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var in struct {
		SecretID string `json:"SecretId"`
		Name     string `json:"Name"`
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&in) != nil {
		awsError(w, "SerializationException", "expected a JSON POST")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch target := r.Header.Get("X-Amz-Target"); target {
	case "secretsmanager.GetSecretValue":
		v, ok := s.secrets[in.SecretID]
		if !ok {
			awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		s.reads++
		reply(w, map[string]any{"ARN": arn("secretsmanager", "secret:"+in.SecretID), "Name": in.SecretID,
			"SecretString": v, "VersionId": "1", "VersionStages": []string{"AWSCURRENT"}})
	case "AmazonSSM.GetParameter":
		v, ok := s.parameters[in.Name]
		if !ok {
			awsError(w, "ParameterNotFound", "")
			return
		}
		s.reads++
		reply(w, map[string]any{"Parameter": map[string]any{"Name": in.Name, "Type": "SecureString", "Value": v,
			"Version": 1, "ARN": arn("ssm", "parameter"+in.Name), "DataType": "text"}})
	default:
		awsError(w, "UnknownOperationException", fmt.Sprintf("operation %q is not emulated", target))
	}
}

func arn(service, resource string) string {
	return "arn:aws:" + service + ":eu-central-1:123456789012:" + resource
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(v)
}

func awsError(w http.ResponseWriter, typ, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"__type": typ, "message": msg})
}
