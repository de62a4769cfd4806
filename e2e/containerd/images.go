package containerd

import "github.com/netready/netready/e2e/ociimage"

// Image is a one-layer image of static binaries (e2e/ociimage, shared with the K3s tier).
type Image = ociimage.Image

// The images the tests run, built from the tools dir's static programs.
var (
	PauseImage = Image{
		Name:       "localhost/netready-e2e/pause:1",
		Files:      map[string]string{"/pause": Pause},
		Entrypoint: []string{"/pause"},
	}
	ProbeImage = Image{
		Name:       "localhost/netready-e2e/probe:1",
		Files:      map[string]string{"/probe": Probe},
		Entrypoint: []string{"/probe"},
		Cmd:        []string{"app"},
	}
)

// WriteOCIArchiveFile writes img as an OCI image-layout tar (ociimage.WriteFile).
func WriteOCIArchiveFile(path string, img Image, tools string) error {
	return ociimage.WriteFile(path, img, tools)
}
