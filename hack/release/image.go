package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// refNameAnnotation tags the index in an OCI layout (what `skopeo copy
// oci:DIR:TAG` and `make push` read).
const refNameAnnotation = "org.opencontainers.image.ref.name"

// defaultPath is the PATH BuildKit puts in a FROM-scratch image's config.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// imageSpec is one image of the release: its Dockerfile, and the labels the
// release adds (revision, version).
type imageSpec struct {
	Name    string // k8secrets-agent
	DF      dockerfile
	Labels  map[string]string
	Created time.Time
}

// platformImage builds the image of one platform, with binaries COPY'd from
// bin/ taken from binDir (dist/bin/OS-ARCH) and other files from root.
func platformImage(spec imageSpec, root, binDir string, p v1.Platform) (v1.Image, error) {
	cfg := &v1.ConfigFile{
		Architecture: p.Architecture,
		OS:           p.OS,
		Created:      v1.Time{Time: spec.Created},
		Config: v1.Config{
			Env:        []string{defaultPath},
			User:       spec.DF.User,
			Entrypoint: spec.DF.Entrypoint,
			Labels:     spec.Labels,
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	img, err := mutate.ConfigFile(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), cfg)
	if err != nil {
		return nil, err
	}
	for _, c := range spec.DF.Copies {
		src := filepath.Join(root, filepath.FromSlash(c.Src))
		if rel, ok := strings.CutPrefix(c.Src, "bin/"); ok {
			src = filepath.Join(binDir, rel)
		}
		b, err := fileLayer(src, c.Dst, spec.Created)
		if err != nil {
			return nil, fmt.Errorf("%s: COPY %s %s: %w", spec.DF.Path, c.Src, c.Dst, err)
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:     l,
			MediaType: types.OCILayer,
			History: v1.History{
				Created:   v1.Time{Time: spec.Created},
				CreatedBy: "COPY " + c.Src + " " + c.Dst,
				Comment:   "hack/release from " + filepath.Base(spec.DF.Path),
			},
		})
		if err != nil {
			return nil, err
		}
	}
	return img, nil
}

// fileLayer is an uncompressed layer holding src at dst, owned by root with
// src's permissions, as Docker's COPY makes it (parent directories included),
// stamped with mtime so that the digest depends on the content only.
func fileLayer(src, dst string, mtime time.Time) ([]byte, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	name := strings.TrimPrefix(path.Clean(dst), "/")
	var dirs []string
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		dirs = append([]string{d}, dirs...)
	}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(st.Mode().Perm()), Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// imageIndex assembles the multi-arch index of spec from one image per
// platform, annotated with the same OCI labels.
func imageIndex(spec imageSpec, root, dist string, platforms []v1.Platform) (v1.ImageIndex, map[string]v1.Image, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	imgs := map[string]v1.Image{}
	for _, p := range platforms {
		img, err := platformImage(spec, root, filepath.Join(dist, "bin", p.OS+"-"+p.Architecture), p)
		if err != nil {
			return nil, nil, err
		}
		img = mutate.Annotations(img, spec.Labels).(v1.Image)
		pp := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &pp},
		})
		imgs[p.OS+"/"+p.Architecture] = img
	}
	return mutate.Annotations(idx, spec.Labels).(v1.ImageIndex), imgs, nil
}

// writeLayout writes idx as the only index of a new OCI layout at dir, tagged
// version.
func writeLayout(dir string, idx v1.ImageIndex, version string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{refNameAnnotation: version}))
}

// readLayout returns the index of the OCI layout at dir and its tag.
func readLayout(dir string) (v1.ImageIndex, string, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, "", fmt.Errorf("read OCI layout %s: %w (run make release)", dir, err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		return nil, "", err
	}
	m, err := top.IndexManifest()
	if err != nil {
		return nil, "", err
	}
	if len(m.Manifests) != 1 {
		return nil, "", fmt.Errorf("OCI layout %s holds %d manifests; want one image index", dir, len(m.Manifests))
	}
	d := m.Manifests[0]
	idx, err := top.ImageIndex(d.Digest)
	if err != nil {
		return nil, "", fmt.Errorf("OCI layout %s: index %s: %w", dir, d.Digest, err)
	}
	return idx, d.Annotations[refNameAnnotation], nil
}
