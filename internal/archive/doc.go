// Package archive reads and writes Cedana checkpoint archives.
//
// A checkpoint archive is a single zip file that holds the CRIU images of a
// dumped process tree (entries under "images/"), the contents of files the
// processes had open for writing ("files/N"), and a JSON manifest
// ("manifest.json", written last) that records the format version, what
// was dumped, and the size and digests (SHA-256, XXH3-128) of every other
// entry. The layout and
// the compatibility rules are documented in docs/archive-format.md.
//
// Writing goes through [Create], which streams the images into a temporary
// file next to the destination, compresses them with zstd (zip method 93),
// hashes them in the same pass and publishes the archive atomically.
//
// Reading goes through [Open], which validates the manifest and the zip
// structure without reading any content, then [Reader.Extract] or
// [Reader.Verify], which decompress every entry and check its size and
// digest. Archives are untrusted input: every name, size and mode is
// checked before anything is written, and nothing is ever written outside
// the extraction directory. The digests detect corruption; they do not
// authenticate the archive (whoever can rewrite an entry can rewrite the
// manifest too).
package archive
