package fakehcloud

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// reservedLabelPrefix is the key prefix Hetzner keeps for itself.
const reservedLabelPrefix = "hetzner.cloud/"

// labelProblem describes why a label is invalid, or returns "".
func labelProblem(key, value string) string {
	// hcloud-go carries Hetzner's own key and value patterns.
	if _, err := hcloud.ValidateResourceLabels(map[string]any{key: value}); err != nil {
		return err.Error()
	}
	if strings.HasPrefix(key, reservedLabelPrefix) {
		return fmt.Sprintf("label key '%s' uses the reserved prefix %s", key, reservedLabelPrefix)
	}
	return ""
}

// validateLabels answers invalid_input listing every invalid label.
func validateLabels(labels map[string]string) error {
	var problems []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if p := labelProblem(k, labels[k]); p != "" {
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		return errInvalidField("labels", problems...)
	}
	return nil
}

// cloneLabels copies labels, never returning nil so that JSON shows {}.
func cloneLabels(labels map[string]string) map[string]string {
	out := make(map[string]string, len(labels))
	maps.Copy(out, labels)
	return out
}

var hostnameLabel = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)

// validHostname reports whether name is an RFC 1123 hostname.
func validHostname(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for part := range strings.SplitSeq(name, ".") {
		if !hostnameLabel.MatchString(part) {
			return false
		}
	}
	return true
}
