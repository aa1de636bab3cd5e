package fakehcloud

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// selector is a parsed label selector: requirements that must all hold.
type selector []requirement

type requirement struct {
	key    string
	op     string // "=", "!=", "exists", "!exists", "in", "notin"
	values []string
}

var setRequirement = regexp.MustCompile(`^(\S+)\s+(in|notin)\s*\((.*)\)$`)

// parseSelector parses Hetzner's label selector syntax: k=v, k==v, k!=v, k,
// !k, k in (a,b), k notin (a,b), joined by commas meaning AND.
func parseSelector(s string) (selector, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	parts, err := splitTopLevel(s)
	if err != nil {
		return nil, err
	}
	sel := make(selector, 0, len(parts))
	for _, p := range parts {
		r, err := parseRequirement(strings.TrimSpace(p))
		if err != nil {
			return nil, err
		}
		sel = append(sel, r)
	}
	return sel, nil
}

// splitTopLevel splits at commas outside parentheses.
func splitTopLevel(s string) ([]string, error) {
	var parts []string
	depth, start := 0, 0
	for i, r := range s {
		switch r {
		case '(':
			depth++
			if depth > 1 {
				return nil, fmt.Errorf("nested parentheses in %q", s)
			}
		case ')':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("unbalanced parentheses in %q", s)
			}
		case ',':
			if depth == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced parentheses in %q", s)
	}
	return append(parts, s[start:]), nil
}

func parseRequirement(p string) (requirement, error) {
	var r requirement
	switch {
	case p == "":
		return r, fmt.Errorf("empty requirement")
	case strings.HasPrefix(p, "!"):
		r = requirement{key: strings.TrimSpace(p[1:]), op: "!exists"}
	case setRequirement.MatchString(p):
		m := setRequirement.FindStringSubmatch(p)
		r = requirement{key: m[1], op: m[2]}
		for v := range strings.SplitSeq(m[3], ",") {
			r.values = append(r.values, strings.TrimSpace(v))
		}
	case strings.Contains(p, "!="):
		k, v, _ := strings.Cut(p, "!=")
		r = requirement{key: strings.TrimSpace(k), op: "!=", values: []string{strings.TrimSpace(v)}}
	case strings.Contains(p, "="):
		k, v, _ := strings.Cut(p, "=")
		v = strings.TrimPrefix(v, "=") // "==" means "="
		r = requirement{key: strings.TrimSpace(k), op: "=", values: []string{strings.TrimSpace(v)}}
	default:
		r = requirement{key: p, op: "exists"}
	}
	if r.key == "" {
		return r, fmt.Errorf("missing key in %q", p)
	}
	if prob := labelProblem(r.key, ""); prob != "" {
		return r, fmt.Errorf("requirement %q: %s", p, prob)
	}
	for _, v := range r.values {
		if prob := labelProblem(r.key, v); prob != "" {
			return r, fmt.Errorf("requirement %q: %s", p, prob)
		}
	}
	return r, nil
}

// matches reports whether labels satisfy every requirement.
func (s selector) matches(labels map[string]string) bool {
	for _, r := range s {
		v, ok := labels[r.key]
		var hold bool
		switch r.op {
		case "exists":
			hold = ok
		case "!exists":
			hold = !ok
		case "=":
			hold = ok && v == r.values[0]
		case "!=":
			hold = !ok || v != r.values[0]
		case "in":
			hold = ok && slices.Contains(r.values, v)
		case "notin":
			hold = !ok || !slices.Contains(r.values, v)
		}
		if !hold {
			return false
		}
	}
	return true
}

// selectorFromQuery parses the label_selector query value, answering
// invalid_input for a malformed one.
func selectorFromQuery(q map[string][]string) (selector, error) {
	var raw string
	if v := q["label_selector"]; len(v) > 0 {
		raw = v[0]
	}
	sel, err := parseSelector(raw)
	if err != nil {
		return nil, errInvalidField("label_selector", err.Error())
	}
	return sel, nil
}
