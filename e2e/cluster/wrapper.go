package cluster

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// wrapperScript replaces --privileged, which Docker refuses where the
// capability bounding set lacks CAP_SYS_RESOURCE ("unable to apply caps:
// operation not permitted"), by what the node needs: every other capability,
// unmasked /proc and /sys paths, all devices, /dev/kmsg for the kubelet.
// Docker then mounts /sys and the cgroups read-only; the node image's
// unprivileged-entrypoint remounts them read-write.
const wrapperScript = `#!/bin/bash
# Written by the k8secrets cluster tooling (e2e/cluster/wrapper.go) because
# 'docker run --privileged' is refused on this host. Only kind uses it.
real=%q
case "${1:-}" in
run | create)
	args=()
	for a in "$@"; do
		if [[ $a == --privileged ]]; then
			args+=(--cap-add=ALL --cap-drop=SYS_RESOURCE
				--security-opt systempaths=unconfined --security-opt seccomp=unconfined
				--security-opt apparmor=unconfined
				'--device-cgroup-rule=a *:* rwm' --device /dev/kmsg)
		else
			args+=("$a")
		fi
	done
	exec "$real" "${args[@]}"
	;;
exec)
	args=()
	for a in "$@"; do [[ $a == --privileged ]] || args+=("$a"); done
	exec "$real" "${args[@]}"
	;;
esac
exec "$real" "$@"
`

var wrapperOnce struct {
	sync.Once
	err error
}

// useWrapperIfNeeded probes once whether Docker accepts --privileged and,
// if it does not, puts the wrapper first on this process's PATH, where
// kind's docker provider finds it.
func useWrapperIfNeeded(o Options) error {
	wrapperOnce.Do(func() {
		wrapperOnce.err = installWrapper(o)
	})
	return wrapperOnce.err
}

func installWrapper(o Options) error {
	real, err := exec.LookPath("docker")
	if err != nil {
		return fmt.Errorf("docker: %w; run hack/ci-deps.sh", err)
	}
	dir := filepath.Join(o.CacheDir, "docker-wrapper")
	if filepath.Dir(real) == dir {
		return nil // already on PATH, e.g. from a parent process
	}
	refused, err := privilegedRefused(real, o)
	if err != nil {
		return err
	}
	if !refused {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("docker wrapper: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "docker"), fmt.Appendf(nil, wrapperScript, real), 0o755); err != nil {
		return fmt.Errorf("docker wrapper: %w", err)
	}
	o.Logger.Info("docker run --privileged is refused here; kind uses a wrapper", "path", filepath.Join(dir, "docker"))
	return os.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// privilegedRefused runs /bin/true in a privileged container of a node
// image (the one asked for, the stock one or the offline one, whichever
// Docker has) and reports whether Docker refused the capabilities. Other
// images will not do: in one whose entrypoint is missing, runc fails on the
// missing file before it applies the capabilities.
func privilegedRefused(docker string, o Options) (bool, error) {
	if err := exec.Command(docker, "version").Run(); err != nil {
		return false, fmt.Errorf("docker version: %w; is dockerd running? (hack/ci-deps.sh starts it)", err)
	}
	for _, image := range []string{o.Image, StockImage, "k8secrets/node:" + o.KubernetesVersion} {
		if image == "" || exec.Command(docker, "image", "inspect", image).Run() != nil {
			continue
		}
		var stderr bytes.Buffer
		cmd := exec.Command(docker, "run", "--rm", "--privileged", "--entrypoint", "/bin/true", image)
		cmd.Stderr = &stderr
		if err := cmd.Run(); err == nil {
			return false, nil
		}
		return strings.Contains(stderr.String(), "apply caps") ||
			strings.Contains(stderr.String(), "operation not permitted"), nil
	}
	return false, nil // no node image, so no node either: Create will say so
}
