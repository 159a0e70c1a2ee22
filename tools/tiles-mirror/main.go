// Command tiles-mirror mirrors a whole C2SP tlog-tiles log over HTTP and verifies it against
// the log's signed checkpoint, with third-party code only: torchwood's tlog-tiles client
// (filippo.io/torchwood) fetches and authenticates every tile, golang.org/x/mod/sumdb/note
// checks the checkpoint's signature with the log's verifier key.
//
// Steward's tests run it against `steward serve --tiles-listen` (tests/integration/
// test_tiles_mirror.py): a client nobody here wrote agreeing with the served bytes is the
// evidence that the tiles follow the spec.
//
//	tiles-mirror -url http://127.0.0.1:7480/ -vkey 'origin+1234abcd+AQ...' -out mirror/
//
// On success it prints one JSON line (origin, size, root, entries, the SHA-256 of the entries
// each prefixed by its uint32 big-endian length) and exits 0; any failure to fetch or verify
// is one line on stderr and exit status 1.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"filippo.io/torchwood"
	"golang.org/x/mod/sumdb/note"
)

type summary struct {
	Origin        string `json:"origin"`
	Size          int64  `json:"size"`
	Root          string `json:"root"`
	Entries       int64  `json:"entries"`
	EntriesSHA256 string `json:"entries_sha256"`
}

func main() {
	url := flag.String("url", "", "the log's tiles URL prefix (serves checkpoint and tile/...)")
	vkey := flag.String("vkey", "", "the log's note verifier key (name+keyid+base64 key)")
	origin := flag.String("origin", "", "the checkpoint origin to require (default: the vkey's name)")
	out := flag.String("out", "", "directory for the mirror: verified full tiles, the checkpoint, entries.bin")
	concurrency := flag.Int("concurrency", 8, "tile requests in flight at once")
	timeout := flag.Duration("timeout", 10*time.Minute, "give up after this long")
	flag.Parse()
	if *url == "" || *vkey == "" {
		fail(errors.New("-url and -vkey are required"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	s, err := mirror(ctx, *url, *vkey, *origin, *out, *concurrency)
	if err != nil {
		fail(err)
	}
	line, _ := json.Marshal(s)
	fmt.Println(string(line))
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "tiles-mirror: %v\n", err)
	os.Exit(1)
}

func mirror(ctx context.Context, url, vkey, origin, out string, concurrency int) (*summary, error) {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("verifier key: %w", err)
	}
	if origin == "" {
		origin = verifier.Name()
	}
	fetcher, err := torchwood.NewTileFetcher(url,
		torchwood.WithConcurrencyLimit(concurrency),
		torchwood.WithUserAgent("steward-tiles-mirror"))
	if err != nil {
		return nil, err
	}

	signed, err := fetcher.ReadEndpoint(ctx, "checkpoint")
	if err != nil {
		return nil, fmt.Errorf("fetching the checkpoint: %w", err)
	}
	n, err := note.Open(signed, note.VerifierList(verifier))
	if err != nil {
		return nil, fmt.Errorf("the checkpoint does not verify with %s: %w", verifier.Name(), err)
	}
	checkpoint, err := torchwood.ParseCheckpoint(n.Text)
	if err != nil {
		return nil, fmt.Errorf("the checkpoint: %w", err)
	}
	if checkpoint.Origin != origin {
		return nil, fmt.Errorf("the checkpoint's origin is %q, expected %q", checkpoint.Origin, origin)
	}

	var reader torchwood.TileReader = fetcher
	var entriesOut io.Writer = io.Discard
	if out != "" {
		tilesDir := filepath.Join(out, "tiles")
		if err := os.MkdirAll(tilesDir, 0o755); err != nil {
			return nil, err
		}
		// Only tiles the client has verified against the checkpoint are saved.
		reader, err = torchwood.NewPermanentCache(fetcher, tilesDir)
		if err != nil {
			return nil, err
		}
		f, err := os.Create(filepath.Join(out, "entries.bin"))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		buffered := bufio.NewWriterSize(f, 1<<20)
		defer buffered.Flush()
		entriesOut = buffered
	}
	client, err := torchwood.NewClient(reader)
	if err != nil {
		return nil, err
	}

	digest := sha256.New()
	var next int64
	for next < checkpoint.N {
		before := next
		// Entries may stop short of the tree's size (it avoids a trailing partial bundle);
		// asked again from there, it fetches the rest.
		for index, entry := range client.Entries(ctx, checkpoint.Tree, next) {
			if index != next {
				return nil, fmt.Errorf("entry %d came where %d was expected", index, next)
			}
			var length [4]byte
			binary.BigEndian.PutUint32(length[:], uint32(len(entry)))
			digest.Write(length[:])
			digest.Write(entry)
			if _, err := entriesOut.Write(length[:]); err != nil {
				return nil, err
			}
			if _, err := entriesOut.Write(entry); err != nil {
				return nil, err
			}
			next++
		}
		if err := client.Err(); err != nil {
			return nil, fmt.Errorf("after %d of %d entries: %w", next, checkpoint.N, err)
		}
		if next == before {
			return nil, fmt.Errorf("no progress at entry %d of %d", next, checkpoint.N)
		}
	}
	if out != "" {
		if err := os.WriteFile(filepath.Join(out, "checkpoint"), signed, 0o644); err != nil {
			return nil, err
		}
	}
	return &summary{
		Origin:        checkpoint.Origin,
		Size:          checkpoint.N,
		Root:          base64.StdEncoding.EncodeToString(checkpoint.Hash[:]),
		Entries:       next,
		EntriesSHA256: hex.EncodeToString(digest.Sum(nil)),
	}, nil
}
