// Command release builds the release artifacts of k8secrets from the static
// binaries `make release` compiled into dist/bin/OS-ARCH/, and pushes the
// images:
//
//	release build -dist DIR -version V -revision SHA -epoch S -cyclonedx-gomod PATH [-registry R]
//	release push  -dist DIR -registry host/org [-insecure]
//
// build writes, in DIR: tar.gz archives of k8secrets-job (and of the same
// binary as kubectl-k8secrets, for krew) for every platform and of
// k8secrets-agent for Linux, a CycloneDX SBOM per binary and per image
// (sbom/), checksums.txt, the krew manifest (plugins/k8secrets.yaml), and an
// OCI layout per image (images/NAME/) holding a multi-arch index of the
// FROM-scratch image its Dockerfile describes. Nothing is fetched: no base
// image, no emulation. push copies each layout's index to REGISTRY/NAME:TAG.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// images are the project's images, each built from Dockerfile.<short name>.
var images = []string{"k8secrets-agent", "k8secrets-job", "k8secrets-demo"}

// archived are the binaries shipped as archives, on every platform they were
// built for (the agent and the demo app are Linux-only).
var archived = []string{"k8secrets-job", "k8secrets-agent"}

const (
	sourceURL = "https://github.com/k8secrets/k8secrets"
	license   = "Apache-2.0"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: release build|push [flags]; see hack/release/main.go")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	dist := fs.String("dist", "dist", "release directory (binaries in bin/OS-ARCH/)")
	registry := fs.String("registry", "ghcr.io/k8secrets", "registry and organisation the images are pushed to (host/org)")
	switch args[0] {
	case "build":
		o := buildOpts{}
		fs.StringVar(&o.Root, "root", ".", "the repository (Dockerfiles, LICENSE)")
		fs.StringVar(&o.Version, "version", "", "version (git describe)")
		fs.StringVar(&o.Revision, "revision", "", "commit (git rev-parse HEAD)")
		fs.Int64Var(&o.Epoch, "epoch", 0, "time stamp of images and archives, in Unix seconds (the commit's)")
		fs.StringVar(&o.CycloneDX, "cyclonedx-gomod", "cyclonedx-gomod", "the cyclonedx-gomod binary")
		fs.StringVar(&o.DownloadURL, "download-url", sourceURL+"/releases/download/{version}", "where the krew manifest says the archives are")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if o.Version == "" || o.Revision == "" {
			return fmt.Errorf("build: -version and -revision are required")
		}
		o.Dist, o.Registry = *dist, *registry
		return build(o, out)
	case "push":
		insecure := fs.Bool("insecure", false, "plain HTTP to the registry (localhost and private addresses get it anyway)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		_, err := push(ctx, *dist, *registry, *insecure, out)
		return err
	}
	return fmt.Errorf("unknown command %q; want build or push", args[0])
}

type buildOpts struct {
	Dist, Root, Version, Revision, Registry, CycloneDX, DownloadURL string
	Epoch                                                           int64
}

// built is what build made of one image.
type built struct {
	Name   string
	Digest v1.Hash
}

func build(o buildOpts, out io.Writer) error {
	created := time.Unix(o.Epoch, 0).UTC()
	for _, g := range []string{"*.tar.gz", checksumsFile, "sbom", "images", "plugins"} {
		m, _ := filepath.Glob(filepath.Join(o.Dist, g))
		for _, p := range m {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	for _, d := range []string{"sbom", "images", "plugins"} {
		if err := os.MkdirAll(filepath.Join(o.Dist, d), 0o755); err != nil {
			return err
		}
	}
	platforms, err := builtPlatforms(o.Dist)
	if err != nil {
		return err
	}
	licenseFile := filepath.Join(o.Root, "LICENSE")
	var sums []string
	var krew []krewArchive
	for _, p := range platforms {
		for _, bin := range archived {
			src := filepath.Join(o.Dist, "bin", p.OS+"-"+p.Architecture, bin)
			if _, err := os.Stat(src); err != nil {
				continue
			}
			names := []string{bin}
			if bin == "k8secrets-job" {
				names = append(names, krewBin)
			}
			for _, n := range names {
				file := fmt.Sprintf("%s_%s_%s_%s.tar.gz", n, o.Version, p.OS, p.Architecture)
				if err := writeArchive(filepath.Join(o.Dist, file), []archiveFile{{n, src}, {"LICENSE", licenseFile}}, created); err != nil {
					return fmt.Errorf("archive %s: %w", file, err)
				}
				sums = append(sums, file)
				if n == krewBin {
					sum, err := fileSHA256(filepath.Join(o.Dist, file))
					if err != nil {
						return err
					}
					krew = append(krew, krewArchive{OS: p.OS, Arch: p.Architecture, File: file, SHA256: sum})
				}
			}
			// One SBOM per binary: kubectl-k8secrets is the same file.
			sbom := fmt.Sprintf("sbom/%s_%s_%s_%s.cdx.json", bin, o.Version, p.OS, p.Architecture)
			if err := binarySBOM(o.CycloneDX, src, filepath.Join(o.Dist, sbom), o.Version); err != nil {
				return err
			}
			sums = append(sums, sbom)
		}
	}
	if len(krew) == 0 {
		return fmt.Errorf("no k8secrets-job in %s/bin/*/: run make release", o.Dist)
	}
	krewPath := filepath.Join(o.Dist, "plugins", "k8secrets.yaml")
	if err := writeKrewManifest(krewPath, o.Version, strings.ReplaceAll(o.DownloadURL, "{version}", o.Version), krew); err != nil {
		return err
	}

	var linux []v1.Platform
	for _, p := range platforms {
		if p.OS == "linux" {
			linux = append(linux, p)
		}
	}
	var made []built
	for _, img := range images {
		df, err := parseDockerfile(filepath.Join(o.Root, "Dockerfile."+strings.TrimPrefix(img, "k8secrets-")), map[string]string{"VERSION": o.Version})
		if err != nil {
			return err
		}
		spec := imageSpec{Name: img, DF: df, Created: created, Labels: map[string]string{}}
		for k, v := range df.Labels {
			spec.Labels[k] = v
		}
		spec.Labels["org.opencontainers.image.source"] = sourceURL
		spec.Labels["org.opencontainers.image.version"] = o.Version
		spec.Labels["org.opencontainers.image.revision"] = o.Revision
		spec.Labels["org.opencontainers.image.created"] = created.Format(time.RFC3339)
		if spec.Labels["org.opencontainers.image.licenses"] == "" {
			spec.Labels["org.opencontainers.image.licenses"] = license
		}
		idx, perPlatform, err := imageIndex(spec, o.Root, o.Dist, linux)
		if err != nil {
			return err
		}
		if err := writeLayout(filepath.Join(o.Dist, "images", img), idx, o.Version); err != nil {
			return fmt.Errorf("write OCI layout of %s: %w", img, err)
		}
		d, err := idx.Digest()
		if err != nil {
			return err
		}
		made = append(made, built{Name: img, Digest: d})
		for _, p := range linux {
			key := p.OS + "/" + p.Architecture
			md, err := perPlatform[key].Digest()
			if err != nil {
				return err
			}
			bin := filepath.Join(o.Dist, "bin", p.OS+"-"+p.Architecture, strings.TrimPrefix(df.Entrypoint[0], "/"))
			sbom := fmt.Sprintf("sbom/%s-image_%s_%s_%s.cdx.json", img, o.Version, p.OS, p.Architecture)
			if err := imageSBOM(o.CycloneDX, bin, filepath.Join(o.Dist, sbom), o.Version, o.Registry+"/"+img, md.String(), key); err != nil {
				return err
			}
			sums = append(sums, sbom)
		}
	}
	if err := writeChecksums(o.Dist, sums); err != nil {
		return err
	}
	printUsage(out, o, made)
	return nil
}

// builtPlatforms lists the OS-ARCH directories of dist/bin.
func builtPlatforms(dist string) ([]v1.Platform, error) {
	ents, err := os.ReadDir(filepath.Join(dist, "bin"))
	if err != nil {
		return nil, fmt.Errorf("%w: run make release, which builds the binaries first", err)
	}
	var ps []v1.Platform
	for _, e := range ents {
		osName, arch, ok := strings.Cut(e.Name(), "-")
		if e.IsDir() && ok {
			ps = append(ps, v1.Platform{OS: osName, Architecture: arch})
		}
	}
	return ps, nil
}

// printUsage tells how to use the images once pushed.
func printUsage(out io.Writer, o buildOpts, made []built) {
	fmt.Fprintf(out, "\nrelease %s (%s) in %s:\n", o.Version, o.Revision, o.Dist)
	for _, b := range made {
		fmt.Fprintf(out, "  %s/%s:%s  index %s  (linux/amd64, linux/arm64; OCI layout images/%s)\n", o.Registry, b.Name, o.Version, b.Digest, b.Name)
	}
	agent := o.Registry + "/k8secrets-agent:" + o.Version
	fmt.Fprintf(out, "\nPush them with: make push REGISTRY=%s\n", o.Registry)
	fmt.Fprintf(out, "\nThe Job's flag for the pushed agent:\n  --agent-image %s\n", agent)
	fmt.Fprintf(out, "\nIn a kustomize overlay of manifests/base:\nimages:\n  - name: k8secrets-job\n    newName: %s/k8secrets-job\n    newTag: %s\n", o.Registry, o.Version)
	fmt.Fprintf(out, "configMapGenerator:\n  - name: k8secrets-job\n    behavior: merge\n    literals: [K8SECRETS_AGENT_IMAGE=%s]\n", agent)
}

// pushed is one image index written to a registry.
type pushed struct {
	Ref    name.Tag
	Digest v1.Hash
}

// push writes the index of every OCI layout in dist/images to
// registry/NAME:TAG (the layout's tag), with the credentials of
// ~/.docker/config.json.
func push(ctx context.Context, dist, registry string, insecure bool, out io.Writer) ([]pushed, error) {
	dirs, _ := filepath.Glob(filepath.Join(dist, "images", "*"))
	if len(dirs) == 0 {
		return nil, fmt.Errorf("no image in %s/images: run make release first", dist)
	}
	slices.Sort(dirs)
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	var done []pushed
	for _, dir := range dirs {
		idx, tag, err := readLayout(dir)
		if err != nil {
			return done, err
		}
		ref, err := name.NewTag(strings.TrimSuffix(registry, "/")+"/"+filepath.Base(dir)+":"+tag, opts...)
		if err != nil {
			return done, fmt.Errorf("REGISTRY=%s: %w; want host/org", registry, err)
		}
		if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return done, fmt.Errorf("push %s: %w", ref, err)
		}
		d, err := idx.Digest()
		if err != nil {
			return done, err
		}
		fmt.Fprintf(out, "pushed %s@%s\n", ref, d)
		done = append(done, pushed{Ref: ref, Digest: d})
	}
	return done, nil
}
