package main

// These tests inspect the artifacts `make release` wrote to $DIST (default
// ../../dist): run them with `make release-test`. Each check is a function
// that returns an error, run once on the real artifacts (it must pass) and
// once more on a corrupted copy in TestChecksCatch (it must fail), so that no
// check can pass vacuously.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"debug/macho"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"maps"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

var (
	allPlatforms   = []string{"linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64"}
	imagePlatforms = []string{"linux/amd64", "linux/arm64"}
)

// release is what the tests know of the artifacts under test.
type release struct {
	Dist, Root, Version, Revision string
}

func setup(t *testing.T) release {
	t.Helper()
	r := release{Dist: os.Getenv("DIST"), Root: "../..", Version: os.Getenv("VERSION"), Revision: os.Getenv("REVISION")}
	if r.Dist == "" {
		r.Dist = "../../dist"
	}
	if _, err := os.Stat(filepath.Join(r.Dist, checksumsFile)); err != nil {
		t.Fatalf("no release in %s (%v): run make release-test", r.Dist, err)
	}
	if r.Version == "" || r.Revision == "" {
		t.Fatalf("VERSION and REVISION must name the release under test: run make release-test")
	}
	return r
}

func (r release) bin(platform, name string) string {
	return filepath.Join(r.Dist, "bin", strings.ReplaceAll(platform, "/", "-"), name)
}

func platformOf(s string) v1.Platform {
	o, a, _ := strings.Cut(s, "/")
	return v1.Platform{OS: o, Architecture: a}
}

func dockerfileOf(t *testing.T, r release, img string) dockerfile {
	t.Helper()
	df, err := parseDockerfile(filepath.Join(r.Root, "Dockerfile."+strings.TrimPrefix(img, "k8secrets-")), map[string]string{"VERSION": r.Version})
	if err != nil {
		t.Fatal(err)
	}
	return df
}

// --- checks -----------------------------------------------------------------

// checkIndex: an OCI image index with exactly one image per platform, each
// valid (digests and sizes of config and layers match their bytes) and made
// for that platform, and the OCI annotations.
func checkIndex(idx v1.ImageIndex, platforms []string, r release) (map[string]v1.Image, error) {
	if err := validate.Index(idx); err != nil {
		return nil, fmt.Errorf("invalid index: %w", err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if m.MediaType != "application/vnd.oci.image.index.v1+json" {
		return nil, fmt.Errorf("index media type %s; want an OCI image index", m.MediaType)
	}
	if err := checkLabels(m.Annotations, r); err != nil {
		return nil, fmt.Errorf("index annotations: %w", err)
	}
	imgs := map[string]v1.Image{}
	for _, d := range m.Manifests {
		if d.Platform == nil {
			return nil, fmt.Errorf("manifest %s has no platform", d.Digest)
		}
		p := d.Platform.OS + "/" + d.Platform.Architecture
		if _, dup := imgs[p]; dup {
			return nil, fmt.Errorf("two manifests for %s", p)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		if cf.OS+"/"+cf.Architecture != p {
			return nil, fmt.Errorf("manifest for %s has a config for %s/%s", p, cf.OS, cf.Architecture)
		}
		imgs[p] = img
	}
	if got := slices.Sorted(maps.Keys(imgs)); !slices.Equal(got, platforms) {
		return nil, fmt.Errorf("index platforms %v; want %v", got, platforms)
	}
	return imgs, nil
}

// checkLabels: the OCI labels a registry and a scanner read.
func checkLabels(l map[string]string, r release) error {
	want := map[string]string{
		"org.opencontainers.image.source":   sourceURL,
		"org.opencontainers.image.version":  r.Version,
		"org.opencontainers.image.revision": r.Revision,
		"org.opencontainers.image.licenses": "Apache-2.0",
	}
	for k, v := range want {
		if l[k] != v {
			return fmt.Errorf("%s = %q; want %q", k, l[k], v)
		}
	}
	return nil
}

// checkImage: what the Dockerfile gives (user 65532, the binary as
// entrypoint, the files it COPYs and nothing else), with the binary of
// dist/bin for that platform, and the labels.
func checkImage(img v1.Image, df dockerfile, r release, platform string) error {
	if err := validate.Image(img); err != nil {
		return fmt.Errorf("invalid image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	if cf.Config.User != "65532:65532" || cf.Config.User != df.User {
		return fmt.Errorf("user %q; want 65532:65532 (%s says %q)", cf.Config.User, df.Path, df.User)
	}
	bin := filepath.Base(df.Entrypoint[0])
	if !slices.Equal(cf.Config.Entrypoint, df.Entrypoint) || !slices.Equal(cf.Config.Entrypoint, []string{"/" + bin}) || len(cf.Config.Cmd) != 0 {
		return fmt.Errorf("entrypoint %q cmd %q; want %q", cf.Config.Entrypoint, cf.Config.Cmd, df.Entrypoint)
	}
	if err := checkLabels(cf.Config.Labels, r); err != nil {
		return fmt.Errorf("labels: %w", err)
	}
	files, err := imageFiles(img)
	if err != nil {
		return err
	}
	want := map[string]string{}
	for _, c := range df.Copies {
		src := filepath.Join(r.Root, c.Src)
		if rel, ok := strings.CutPrefix(c.Src, "bin/"); ok {
			src = r.bin(platform, rel)
		}
		sum, err := fileSHA256(src)
		if err != nil {
			return err
		}
		want[strings.TrimPrefix(c.Dst, "/")] = sum
	}
	for n, sum := range files {
		if strings.HasSuffix(n, "/") {
			continue // a parent directory of a COPY destination
		}
		if want[n] == "" {
			return fmt.Errorf("layer file %s is not in %s", n, df.Path)
		}
		if sum != want[n] {
			return fmt.Errorf("layer file %s is not the file %s copies (sha256 %s, want %s)", n, df.Path, sum, want[n])
		}
	}
	for n := range want {
		if _, ok := files[n]; !ok {
			return fmt.Errorf("%s missing from the layers", n)
		}
	}
	return nil
}

// imageFiles lists every entry of every layer: name → sha256 of its content
// ("dir/" entries map to ""), executable files only for regular files owned
// by root.
func imageFiles(img v1.Image) (map[string]string, error) {
	ls, err := img.Layers()
	if err != nil {
		return nil, err
	}
	files := map[string]string{}
	for _, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, err
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				rc.Close()
				return nil, err
			}
			if h.Typeflag == tar.TypeDir {
				files[strings.TrimSuffix(h.Name, "/")+"/"] = ""
				continue
			}
			if h.Typeflag != tar.TypeReg || h.Uid != 0 || h.Gid != 0 {
				rc.Close()
				return nil, fmt.Errorf("layer entry %s: type %c owner %d:%d; want a regular file of root", h.Name, h.Typeflag, h.Uid, h.Gid)
			}
			hs := sha256.New()
			if _, err := io.Copy(hs, tr); err != nil {
				rc.Close()
				return nil, err
			}
			files[h.Name] = hex.EncodeToString(hs.Sum(nil))
		}
		rc.Close()
	}
	return files, nil
}

// checkBinary: a static Go binary for platform, stamped with version: the
// native one prints it (`version`), the others hold it.
func checkBinary(path, platform, version string) error {
	p := platformOf(platform)
	switch p.OS {
	case "linux":
		f, err := elf.Open(path)
		if err != nil {
			return fmt.Errorf("%s: not ELF: %w", path, err)
		}
		defer f.Close()
		want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[p.Architecture]
		if f.Machine != want || f.Class != elf.ELFCLASS64 {
			return fmt.Errorf("%s: ELF machine %v class %v; want %v, 64-bit", path, f.Machine, f.Class, want)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				return fmt.Errorf("%s: has a program interpreter: not static", path)
			}
		}
	case "darwin":
		f, err := macho.Open(path)
		if err != nil {
			return fmt.Errorf("%s: not Mach-O: %w", path, err)
		}
		defer f.Close()
		want := map[string]macho.Cpu{"amd64": macho.CpuAmd64, "arm64": macho.CpuArm64}[p.Architecture]
		if f.Cpu != want || f.Type != macho.TypeExec {
			return fmt.Errorf("%s: Mach-O cpu %v type %v; want %v executable", path, f.Cpu, f.Type, want)
		}
	default:
		return fmt.Errorf("no check for %s", platform)
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return err
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if settings["GOOS"] != p.OS || settings["GOARCH"] != p.Architecture || settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		return fmt.Errorf("%s: built with GOOS=%s GOARCH=%s CGO_ENABLED=%s -trimpath=%s; want %s, CGO_ENABLED=0, -trimpath",
			path, settings["GOOS"], settings["GOARCH"], settings["CGO_ENABLED"], settings["-trimpath"], platform)
	}
	if platform == runtime.GOOS+"/"+runtime.GOARCH {
		out, err := exec.Command(path, "version").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s version: %v: %s", path, err, out)
		}
		if !slices.Contains(strings.Fields(string(out)), version) {
			return fmt.Errorf("%s version printed %q; want %s", path, out, version)
		}
		return nil
	}
	// Not runnable here; -trimpath leaves -ldflags out of the build info: look
	// for the string that -X put in the binary's data.
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Contains(b, []byte(version)) {
		return fmt.Errorf("%s: version %s is not stamped in it", path, version)
	}
	return nil
}

// linkedModules is what `go version -m` says the binary links: path@version
// of the main module and of every dependency.
func linkedModules(path string) (main string, deps map[string]bool, err error) {
	out, err := exec.Command("go", "version", "-m", path).Output()
	if err != nil {
		return "", nil, fmt.Errorf("go version -m %s: %w", path, err)
	}
	deps = map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && f[0] == "mod":
			main = f[1]
		case len(f) >= 3 && f[0] == "dep":
			deps[f[1]+"@"+f[2]] = true
		case len(f) >= 1 && f[0] == "=>":
			return "", nil, fmt.Errorf("%s: a replaced module (%s): teach checkSBOM to follow replacements", path, l)
		}
	}
	return main, deps, nil
}

// checkSBOM: a CycloneDX SBOM listing exactly the Go modules linked into bin
// (`go version -m`), the main module as its subject or (image SBOMs) the
// binary component of the image subject.
func checkSBOM(sbomPath, bin string) error {
	main, linked, err := linkedModules(bin)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(sbomPath)
	if err != nil {
		return err
	}
	type comp struct {
		Type    string `json:"type"`
		Name    string `json:"name"`
		Version string `json:"version"`
		PURL    string `json:"purl"`
	}
	var bom struct {
		BOMFormat   string `json:"bomFormat"`
		SpecVersion string `json:"specVersion"`
		Metadata    struct {
			Component comp `json:"component"`
		} `json:"metadata"`
		Components []comp `json:"components"`
	}
	if err := json.Unmarshal(b, &bom); err != nil {
		return fmt.Errorf("%s: %w", sbomPath, err)
	}
	if bom.BOMFormat != "CycloneDX" || bom.SpecVersion == "" {
		return fmt.Errorf("%s: bomFormat %q specVersion %q; want CycloneDX", sbomPath, bom.BOMFormat, bom.SpecVersion)
	}
	listed := map[string]bool{}
	subject := bom.Metadata.Component
	for _, c := range bom.Components {
		if !strings.HasPrefix(c.PURL, "pkg:golang/") {
			return fmt.Errorf("%s: component %s (%s) is not a Go module", sbomPath, c.Name, c.PURL)
		}
		if c.Name == main && c.Type == "application" {
			subject = c // an image SBOM: the binary is the image's component
			continue
		}
		listed[c.Name+"@"+c.Version] = true
	}
	if subject.Name != main {
		return fmt.Errorf("%s: describes %q; want the binary's main module %s", sbomPath, subject.Name, main)
	}
	if !maps.Equal(listed, linked) {
		var missing, extra []string
		for m := range linked {
			if !listed[m] {
				missing = append(missing, m)
			}
		}
		for m := range listed {
			if !linked[m] {
				extra = append(extra, m)
			}
		}
		sort.Strings(missing)
		sort.Strings(extra)
		return fmt.Errorf("%s vs go version -m %s: missing %v, not linked %v", sbomPath, bin, missing, extra)
	}
	return nil
}

func imageSBOMPath(r release, img, platform string) string {
	return filepath.Join(r.Dist, "sbom", fmt.Sprintf("%s-image_%s_%s.cdx.json", img, r.Version, strings.ReplaceAll(platform, "/", "_")))
}

// checkImageSBOM: the SBOM of an image lists the modules of its binary and
// names the image by its manifest digest.
func checkImageSBOM(sbom, bin string, img v1.Image) error {
	if err := checkSBOM(sbom, bin); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	var bom struct {
		Metadata struct {
			Component struct {
				Type string `json:"type"`
				PURL string `json:"purl"`
			} `json:"component"`
		} `json:"metadata"`
	}
	b, err := os.ReadFile(sbom)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &bom); err != nil {
		return err
	}
	if c := bom.Metadata.Component; c.Type != "container" || !strings.Contains(c.PURL, "@"+d.String()) {
		return fmt.Errorf("%s describes %s %s; want the container image %s", sbom, c.Type, c.PURL, d)
	}
	return nil
}

// checkChecksums: sums (checksums.txt) names every archive and SBOM in dist,
// each with the sha256 of its bytes.
func checkChecksums(dist string, sums map[string]string) error {
	files, _ := filepath.Glob(filepath.Join(dist, "*.tar.gz"))
	sboms, _ := filepath.Glob(filepath.Join(dist, "sbom", "*.cdx.json"))
	files = append(files, sboms...)
	if len(files) == 0 {
		return fmt.Errorf("no archive in %s", dist)
	}
	want := map[string]bool{}
	for _, f := range files {
		rel, _ := filepath.Rel(dist, f)
		want[filepath.ToSlash(rel)] = true
	}
	for n := range want {
		if sums[n] == "" {
			return fmt.Errorf("%s is not in %s", n, checksumsFile)
		}
	}
	for n, sum := range sums {
		if !want[n] {
			return fmt.Errorf("%s lists %s, which is not in %s", checksumsFile, n, dist)
		}
		got, err := fileSHA256(filepath.Join(dist, n))
		if err != nil {
			return err
		}
		if got != sum {
			return fmt.Errorf("%s: sha256 %s; %s says %s", n, got, checksumsFile, sum)
		}
	}
	return nil
}

// checkArchive: a tar.gz of exactly the binary (executable, the bytes of bin)
// under name, and LICENSE.
func checkArchive(path, name, bin, license string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	want := map[string]string{}
	for n, src := range map[string]string{name: bin, "LICENSE": license} {
		if want[n], err = fileSHA256(src); err != nil {
			return err
		}
	}
	tr := tar.NewReader(gz)
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if want[h.Name] == "" {
			return fmt.Errorf("%s holds %s; want only %s and LICENSE", path, h.Name, name)
		}
		if h.Name == name && h.Mode&0o111 == 0 {
			return fmt.Errorf("%s: %s is not executable (mode %o)", path, name, h.Mode)
		}
		hs := sha256.New()
		if _, err := io.Copy(hs, tr); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if got := hex.EncodeToString(hs.Sum(nil)); got != want[h.Name] {
			return fmt.Errorf("%s: %s differs from %s", path, h.Name, map[string]string{name: bin, "LICENSE": license}[h.Name])
		}
		seen[h.Name] = true
	}
	if len(seen) != 2 {
		return fmt.Errorf("%s holds %v; want %s and LICENSE", path, slices.Sorted(maps.Keys(seen)), name)
	}
	return gz.Close()
}

// checkKrew: one platform per release platform, each naming an archive of
// dist by URI with its real sha256, and the binary and LICENSE it holds.
func checkKrew(p krewPlugin, r release) error {
	if p.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || p.Kind != "Plugin" || p.Metadata.Name != "k8secrets" {
		return fmt.Errorf("krew manifest is %s %s %s; want krew.googlecontainertools.github.com/v1alpha2 Plugin k8secrets", p.APIVersion, p.Kind, p.Metadata.Name)
	}
	if !semver.MatchString(p.Spec.Version) || p.Spec.ShortDescription == "" || len(p.Spec.ShortDescription) > 50 || p.Spec.Homepage == "" {
		return fmt.Errorf("krew spec: version %q (want v-semver), shortDescription %q (want 1 to 50 characters), homepage %q", p.Spec.Version, p.Spec.ShortDescription, p.Spec.Homepage)
	}
	var got []string
	for _, pl := range p.Spec.Platforms {
		platform := pl.Selector.MatchLabels["os"] + "/" + pl.Selector.MatchLabels["arch"]
		got = append(got, platform)
		u, err := url.Parse(pl.URI)
		if err != nil || u.Scheme != "https" {
			return fmt.Errorf("krew %s: uri %q is not https", platform, pl.URI)
		}
		file := filepath.Join(r.Dist, filepath.Base(u.Path))
		sum, err := fileSHA256(file)
		if err != nil {
			return fmt.Errorf("krew %s: %w", platform, err)
		}
		if sum != pl.SHA256 {
			return fmt.Errorf("krew %s: sha256 %s; %s has %s", platform, pl.SHA256, file, sum)
		}
		if pl.Bin != krewBin || !slices.Equal(pl.Files, []krewFile{{krewBin, "."}, {"LICENSE", "."}}) {
			return fmt.Errorf("krew %s: bin %q files %v; want %s and LICENSE", platform, pl.Bin, pl.Files, krewBin)
		}
		if err := checkArchive(file, krewBin, r.bin(platform, "k8secrets-job"), filepath.Join(r.Root, "LICENSE")); err != nil {
			return fmt.Errorf("krew %s: %w", platform, err)
		}
	}
	sort.Strings(got)
	if want := slices.Sorted(slices.Values(allPlatforms)); !slices.Equal(got, want) {
		return fmt.Errorf("krew platforms %v; want %v", got, want)
	}
	return nil
}

// checkPulled: ref in a registry is a multi-arch index of the image
// platforms; each image pulled by platform holds the binary of dist/bin.
func checkPulled(ref name.Reference, df dockerfile, r release) error {
	idx, err := remote.Index(ref)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	if _, err := checkIndex(idx, imagePlatforms, r); err != nil {
		return fmt.Errorf("pulled %s: %w", ref, err)
	}
	for _, p := range imagePlatforms {
		img, err := remote.Image(ref, remote.WithPlatform(platformOf(p)))
		if err != nil {
			return fmt.Errorf("pull %s for %s: %w", ref, p, err)
		}
		if err := checkImage(img, df, r, p); err != nil {
			return fmt.Errorf("pulled %s for %s: %w", ref, p, err)
		}
	}
	return nil
}

// --- the tests --------------------------------------------------------------

func TestImages(t *testing.T) {
	r := setup(t)
	for _, name := range images {
		t.Run(name, func(t *testing.T) {
			df := dockerfileOf(t, r, name)
			idx, tag, err := readLayout(filepath.Join(r.Dist, "images", name))
			if err != nil {
				t.Fatal(err)
			}
			if tag != r.Version {
				t.Errorf("OCI layout tag %q; want %s", tag, r.Version)
			}
			imgs, err := checkIndex(idx, imagePlatforms, r)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, p := range imagePlatforms {
				if err := checkImage(imgs[p], df, r, p); err != nil {
					t.Errorf("%s %s: %v", name, p, err)
				}
				if err := checkImageSBOM(imageSBOMPath(r, name, p), r.bin(p, strings.TrimPrefix(df.Entrypoint[0], "/")), imgs[p]); err != nil {
					t.Errorf("%s %s: %v", name, p, err)
				}
			}
		})
	}
}

func TestBinaries(t *testing.T) {
	r := setup(t)
	for _, p := range allPlatforms {
		bins := []string{"k8secrets-job"}
		if platformOf(p).OS == "linux" {
			bins = append(bins, "k8secrets-agent")
		}
		for _, b := range bins {
			t.Run(p+"/"+b, func(t *testing.T) {
				bin := r.bin(p, b)
				if err := checkBinary(bin, p, r.Version); err != nil {
					t.Fatal(err)
				}
				suffix := fmt.Sprintf("_%s_%s.", r.Version, strings.ReplaceAll(p, "/", "_"))
				if err := checkSBOM(filepath.Join(r.Dist, "sbom", b+suffix+"cdx.json"), bin); err != nil {
					t.Error(err)
				}
				if err := checkArchive(filepath.Join(r.Dist, b+suffix+"tar.gz"), b, bin, filepath.Join(r.Root, "LICENSE")); err != nil {
					t.Error(err)
				}
			})
		}
	}
}

func TestChecksumsAndKrew(t *testing.T) {
	r := setup(t)
	sums, err := readChecksums(r.Dist)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkChecksums(r.Dist, sums); err != nil {
		t.Error(err)
	}
	p, err := readKrewManifest(filepath.Join(r.Dist, "plugins", "k8secrets.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkKrew(p, r); err != nil {
		t.Error(err)
	}
}

// TestKrewInstall installs the krew manifest with krew itself (KREW built
// by make krew-tool), from the release's own archives (--archive: krew
// checks them against the manifest's sha256 as if it had downloaded them),
// once per platform it lists (KREW_OS, KREW_ARCH): krew validates the
// manifest, unpacks the files it names and links the plugin's binary; the
// native one then runs. Installing an archive under another platform's
// entry fails on its checksum.
func TestKrewInstall(t *testing.T) {
	r := setup(t)
	krew := os.Getenv("KREW")
	if krew == "" {
		t.Fatal("KREW names the krew binary: run make release-test")
	}
	manifest := filepath.Join(r.Dist, "plugins", "k8secrets.yaml")
	install := func(platform, archive string) (string, error) {
		root := t.TempDir()
		goos, goarch, _ := strings.Cut(platform, "/")
		cmd := exec.Command(krew, "install", "--manifest="+manifest, "--archive="+archive)
		cmd.Env = append(cmd.Environ(), "KREW_ROOT="+root, "KREW_OS="+goos, "KREW_ARCH="+goarch)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("krew install for %s: %v\n%s", platform, err, out)
		}
		return filepath.Join(root, "bin", "kubectl-k8secrets"), nil
	}
	archive := func(platform string) string {
		return filepath.Join(r.Dist, fmt.Sprintf("kubectl-k8secrets_%s_%s.tar.gz", r.Version, strings.ReplaceAll(platform, "/", "_")))
	}
	for _, p := range allPlatforms {
		t.Run(p, func(t *testing.T) {
			bin, err := install(p, archive(p))
			if err != nil {
				t.Fatal(err)
			}
			if err := checkBinary(bin, p, r.Version); err != nil {
				t.Errorf("the plugin krew installed: %v", err)
			}
		})
	}
	if _, err := install("linux/amd64", archive("linux/arm64")); err == nil || !strings.Contains(err.Error(), "checksum does not match") {
		t.Errorf("krew install of linux/arm64's archive as linux/amd64 = %v; want a checksum mismatch", err)
	}
}

// TestPush pushes dist/images as `make push` does to a registry the test
// starts (go-containerregistry's, in memory), pulls every index back, and
// checks both platforms' images and their binaries.
func TestPush(t *testing.T) {
	r := setup(t)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	var out bytes.Buffer
	done, err := push(context.Background(), r.Dist, host+"/org", false, &out)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out.String())
	}
	if len(done) != len(images) {
		t.Fatalf("pushed %d images; want %d:\n%s", len(done), len(images), out.String())
	}
	for _, img := range images {
		ref, err := name.ParseReference(host + "/org/" + img + ":" + r.Version)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkPulled(ref, dockerfileOf(t, r, img), r); err != nil {
			t.Error(err)
		}
	}
}
