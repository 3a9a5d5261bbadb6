package framework

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/k8secrets/k8secrets/e2e/cluster"
)

// TestAppImage is the image BuildTestApp builds: e2e/testapp FROM scratch,
// running as 65532, with /bin/cat for ReadFile and /bin/apicheck, which
// calls the API server through the kubernetes Service and cluster DNS.
const TestAppImage = "k8secrets-e2e-testapp:dev"

// ErrNotKind means the cluster did not come from e2e/cluster, so images
// cannot be loaded into it from here.
var ErrNotKind = errors.New("not the kind cluster of e2e/cluster")

// LoadImages loads images from the local Docker into the kind cluster's
// nodes. Pods must use them with imagePullPolicy Never or IfNotPresent.
func (c *Cluster) LoadImages(ctx context.Context, images ...string) error {
	if c.kind == nil {
		return fmt.Errorf("load images %v: %w; load them yourself or use `make e2e`", images, ErrNotKind)
	}
	return cluster.Load(ctx, *c.kind, images...)
}

// BuildTestApp builds TestAppImage from e2e/testapp (a static binary, no
// network needed) and loads it into the cluster.
func (c *Cluster) BuildTestApp(ctx context.Context) error {
	if err := BuildGoImage(ctx, TestAppImage, "./testapp", "cat", "apicheck"); err != nil {
		return err
	}
	return c.LoadImages(ctx, TestAppImage)
}

// BuildGoImage builds the Go package pkg (a path inside the e2e module, as
// "./testapp") as a static binary and a FROM scratch image tagged tag: the
// binary is /bin/app and the entrypoint; each alias is a copy at /bin/ALIAS
// for programs that dispatch on their name.
func BuildGoImage(ctx context.Context, tag, pkg string, aliases ...string) error {
	dir, err := os.MkdirTemp("", "k8secrets-image-")
	if err != nil {
		return fmt.Errorf("build image %s: %w", tag, err)
	}
	defer os.RemoveAll(dir)
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		return fmt.Errorf("build image %s: %w", tag, err)
	}
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "bin", "app"), pkg)
	build.Dir = moduleDir()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build image %s: go build %s: %w\n%s", tag, pkg, err, out)
	}
	dockerfile := "FROM scratch\nCOPY bin/ /bin/\nENV PATH=/bin\nUSER 65532:65532\nENTRYPOINT [\"/bin/app\"]\n"
	for _, a := range aliases {
		if err := copyFile(filepath.Join(dir, "bin", "app"), filepath.Join(dir, "bin", a)); err != nil {
			return fmt.Errorf("build image %s: %w", tag, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return fmt.Errorf("build image %s: %w", tag, err)
	}
	old := imageID(ctx, tag)
	docker := exec.CommandContext(ctx, "docker", "build", "-q", "-t", tag, dir)
	docker.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	if out, err := docker.CombinedOutput(); err != nil {
		return fmt.Errorf("build image %s: docker build: %w\n%s", tag, err, strings.TrimSpace(string(out)))
	}
	// Each run's build leaves the previous image dangling: remove it.
	if old != "" && old != imageID(ctx, tag) {
		_ = exec.CommandContext(ctx, "docker", "image", "rm", old).Run()
	}
	return nil
}

func imageID(ctx context.Context, tag string) string {
	out, err := exec.CommandContext(ctx, "docker", "image", "inspect", "-f", "{{.Id}}", tag).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}

// moduleDir is the e2e module's root, wherever the tests run from.
func moduleDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}
