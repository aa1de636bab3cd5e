package stack

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"

	"github.com/hcloud-k8s/hcloud-k8s/infra/fakelambda"
)

// BuildBootstrap compiles a function's main package (e.g. ./functions/builder)
// for this machine into dir/bootstrap, the way the Makefile's build-<Function>
// target does for Lambda, and returns the path.
func BuildBootstrap(pkg, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "bootstrap")
	cmd := exec.Command("go", "build", "-tags", "lambda.norpc", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

func moduleRoot() (string, error) {
	b, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	gomod := strings.TrimSpace(string(b))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("find module root: not inside the module")
	}
	return filepath.Dir(gomod), nil
}

// StartLambda runs the functions under the Lambda emulator, each with this
// stack's environment under its own Env (where "" unsets a variable),
// logging JSON as template.yaml's LoggingConfig has Lambda do.
func (s *Stack) StartLambda(fns map[string]fakelambda.Function) (*fakelambda.Emulator, error) {
	withEnv := make(map[string]fakelambda.Function, len(fns))
	for name, fn := range fns {
		env := s.Env()
		env["AWS_LAMBDA_LOG_FORMAT"] = "JSON"
		maps.Copy(env, fn.Env)
		maps.DeleteFunc(env, func(_, v string) bool { return v == "" }) // "" unsets
		fn.Env = env
		withEnv[name] = fn
	}
	emu := fakelambda.New(fakelambda.Options{Functions: withEnv, Logger: s.logger})
	if _, err := emu.Start(); err != nil {
		return nil, fmt.Errorf("start lambda emulator: %w", err)
	}
	return emu, nil
}

// LambdaClient returns an aws-sdk-go-v2 Lambda client of the emulator, as
// AWS_ENDPOINT_URL_LAMBDA makes the functions' own clients.
func LambdaClient(emu *fakelambda.Emulator) *awslambda.Client {
	return awslambda.New(awslambda.Options{
		Region:       "eu-central-1",
		BaseEndpoint: aws.String(emu.URL()),
		Credentials:  credentials.NewStaticCredentialsProvider("local", "local", ""),
	})
}
