// Package deploy holds the tests of what deploys and runs the functions
// outside Go: template.yaml (checked against pkg/config, and against the SAM
// JSON schema when SAM_SCHEMA names it), samconfig.toml, the Makefile's build
// targets, the sample events and env.json, and scripts/invoke, the
// Docker-free `sam local invoke`. It has no code of its own.
package deploy
