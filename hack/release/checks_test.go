package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"maps"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestChecksCatch runs every check of release_test.go on a corrupted copy
// of a real artifact: each must fail, or the check proves nothing.
func TestChecksCatch(t *testing.T) {
	r := setup(t)
	const img = "k8secrets-demo" // the smallest image
	df := dockerfileOf(t, r, img)
	layoutDir := filepath.Join(r.Dist, "images", img)
	idx, _, err := readLayout(layoutDir)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := checkIndex(idx, imagePlatforms, r)
	if err != nil {
		t.Fatal(err)
	}
	amd64 := imgs["linux/amd64"]
	withConfig := func(edit func(*v1.Config)) v1.Image {
		cf, err := amd64.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		c := *cf.Config.DeepCopy()
		edit(&c)
		out, err := mutate.Config(amd64, c)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	shell, err := fileLayer(filepath.Join(r.Root, "LICENSE"), "/bin/sh", time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	shellLayer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(shell)), nil }, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	withShell, err := mutate.AppendLayers(amd64, shellLayer)
	if err != nil {
		t.Fatal(err)
	}
	// Read back from a layout, as the real ones are: validate.Image then
	// passes, and only the file check can catch it.
	withShell = throughLayout(t, withShell)
	arm64Only := mutate.RemoveManifests(idx, match.Platforms(v1.Platform{OS: "linux", Architecture: "amd64"}))

	// A layout whose layer blob lost a byte.
	brokenLayout := t.TempDir()
	if err := os.CopyFS(brokenLayout, os.DirFS(layoutDir)); err != nil {
		t.Fatal(err)
	}
	l0, err := amd64.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ld, err := l0[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(brokenLayout, "blobs", "sha256", ld.Hex)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	brokenIdx, _, err := readLayout(brokenLayout)
	if err != nil {
		t.Fatal(err)
	}

	// An SBOM that lost one module.
	jobSBOM := filepath.Join(r.Dist, "sbom", "k8secrets-job_"+r.Version+"_linux_amd64.cdx.json")
	var bom map[string]any
	sb, err := os.ReadFile(jobSBOM)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(sb, &bom); err != nil {
		t.Fatal(err)
	}
	bom["components"] = bom["components"].([]any)[1:]
	shortSBOM := filepath.Join(t.TempDir(), "short.cdx.json")
	sb, _ = json.Marshal(bom)
	if err := os.WriteFile(shortSBOM, sb, 0o644); err != nil {
		t.Fatal(err)
	}

	sums, err := readChecksums(r.Dist)
	if err != nil {
		t.Fatal(err)
	}
	anyArchive := "k8secrets-job_" + r.Version + "_linux_amd64.tar.gz"
	badSum := maps.Clone(sums)
	badSum[anyArchive] = strings.Repeat("0", 64)
	missingSum := maps.Clone(sums)
	delete(missingSum, anyArchive)

	// An archive with one file too many.
	license := filepath.Join(r.Root, "LICENSE")
	jobBin := r.bin("linux/amd64", "k8secrets-job")
	extraArchive := filepath.Join(t.TempDir(), "extra.tar.gz")
	if err := writeArchive(extraArchive, []archiveFile{{"k8secrets-job", jobBin}, {"LICENSE", license}, {"README.md", filepath.Join(r.Root, "README.md")}}, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}

	krew, err := readKrewManifest(filepath.Join(r.Dist, "plugins", "k8secrets.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	krewBadSum := krew
	krewBadSum.Spec.Platforms = slices.Clone(krew.Spec.Platforms)
	krewBadSum.Spec.Platforms[0].SHA256 = strings.Repeat("0", 64)
	krewSwapped := krew
	krewSwapped.Spec.Platforms = slices.Clone(krew.Spec.Platforms)
	krewSwapped.Spec.Platforms[0].URI, krewSwapped.Spec.Platforms[1].URI = krew.Spec.Platforms[1].URI, krew.Spec.Platforms[0].URI
	krewThree := krew
	krewThree.Spec.Platforms = krew.Spec.Platforms[1:]

	// A registry holding a pushed index that lost its amd64 image.
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	oneArch, err := name.ParseReference(host + "/org/" + img + ":one-arch")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(oneArch, arm64Only, remote.WithContext(context.Background())); err != nil {
		t.Fatal(err)
	}
	notPushed, _ := name.ParseReference(host + "/org/" + img + ":" + r.Version)

	native := runtime.GOOS + "/" + runtime.GOARCH
	other := map[string]string{"amd64": "linux/arm64", "arm64": "linux/amd64"}[runtime.GOARCH]
	wrongRevision := r
	wrongRevision.Revision = strings.Repeat("0", 40)

	tests := []struct {
		name  string
		check func() error
	}{
		{"index without amd64", func() error { _, err := checkIndex(arm64Only, imagePlatforms, r); return err }},
		{"index of another revision", func() error { _, err := checkIndex(idx, imagePlatforms, wrongRevision); return err }},
		{"index without annotations", func() error {
			_, err := checkIndex(mutate.Annotations(idx, map[string]string{"org.opencontainers.image.licenses": ""}).(v1.ImageIndex), imagePlatforms, r)
			return err
		}},
		{"layout with a corrupted layer", func() error { _, err := checkIndex(brokenIdx, imagePlatforms, r); return err }},
		{"image running as root", func() error {
			return checkImage(withConfig(func(c *v1.Config) { c.User = "0:0" }), df, r, "linux/amd64")
		}},
		{"image with a shell entrypoint", func() error {
			return checkImage(withConfig(func(c *v1.Config) { c.Entrypoint = []string{"/bin/sh"} }), df, r, "linux/amd64")
		}},
		{"image without the licenses label", func() error {
			return checkImage(withConfig(func(c *v1.Config) { delete(c.Labels, "org.opencontainers.image.licenses") }), df, r, "linux/amd64")
		}},
		{"image with a file too many", func() error { return checkImage(withShell, df, r, "linux/amd64") }},
		{"image holding the other arch's binary", func() error { return checkImage(amd64, df, r, "linux/arm64") }},
		{"binary of another arch", func() error { return checkBinary(jobBin, "linux/arm64", r.Version) }},
		{"darwin binary of another arch", func() error {
			return checkBinary(r.bin("darwin/arm64", "k8secrets-job"), "darwin/amd64", r.Version)
		}},
		{"darwin binary as linux", func() error { return checkBinary(r.bin("darwin/amd64", "k8secrets-job"), "linux/amd64", r.Version) }},
		{"native binary of another version", func() error { return checkBinary(r.bin(native, "k8secrets-job"), native, "v9.9.9") }},
		{"cross binary of another version", func() error { return checkBinary(r.bin(other, "k8secrets-job"), other, "v9.9.9") }},
		{"SBOM of another binary", func() error { return checkSBOM(jobSBOM, r.bin("linux/amd64", "k8secrets-agent")) }},
		{"image SBOM of the other platform's image", func() error {
			return checkImageSBOM(imageSBOMPath(r, img, "linux/arm64"), r.bin("linux/arm64", "k8secrets-demo"), amd64)
		}},
		{"SBOM missing a module", func() error { return checkSBOM(shortSBOM, jobBin) }},
		{"checksum changed", func() error { return checkChecksums(r.Dist, badSum) }},
		{"checksum missing", func() error { return checkChecksums(r.Dist, missingSum) }},
		{"archive of another binary", func() error {
			return checkArchive(filepath.Join(r.Dist, anyArchive), "k8secrets-job", r.bin("linux/arm64", "k8secrets-job"), license)
		}},
		{"archive with a file too many", func() error { return checkArchive(extraArchive, "k8secrets-job", jobBin, license) }},
		{"krew sha256 changed", func() error { return checkKrew(krewBadSum, r) }},
		{"krew platform missing", func() error { return checkKrew(krewThree, r) }},
		{"krew URIs of two platforms swapped", func() error { return checkKrew(krewSwapped, r) }},
		{"pushed index without amd64", func() error { return checkPulled(oneArch, df, r) }},
		{"nothing pushed", func() error { return checkPulled(notPushed, df, r) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.check()
			if err == nil {
				t.Fatalf("check passed on %s; want an error", tt.name)
			}
			t.Logf("caught: %v", err)
		})
	}
}

// throughLayout writes img to a new OCI layout and reads it back.
func throughLayout(t *testing.T, img v1.Image) v1.Image {
	t.Helper()
	p, err := layout.Write(t.TempDir(), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Image(d)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
