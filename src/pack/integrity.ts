/**
 * Checks of a packed directory's data files against its manifest: file sizes, base tensor
 * checksums and copied file checksums (expert records are checked by the expert store on first
 * read). Each failure is its own error class naming the file and the tensor or record at fault.
 */

import { REPACK } from "./manifest.ts";
import type { BaseTensorEntry, CopiedFile, RecordHasher } from "./format.ts";

/** A file of a packed directory is missing, unreadable, or not the size its manifest says. */
export class PackedFileError extends Error {
  constructor(readonly file: string, message: string) {
    super(message);
    this.name = "PackedFileError";
  }
}

/** A base tensor's bytes do not match the checksum written at pack time. */
export class TensorChecksumError extends Error {
  constructor(
    readonly tensor: string,
    readonly file: string,
    expected: string,
    actual: string,
  ) {
    super(
      `base tensor ${tensor} in ${file} has checksum ${actual} but the manifest says ` +
        `${expected}: the file is damaged; ${REPACK}`,
    );
    this.name = "TensorChecksumError";
  }
}

/** A copied file (tokenizer.json, ...) does not match the checksum written at pack time. */
export class FileChecksumError extends Error {
  constructor(readonly file: string, expected: string, actual: string) {
    super(
      `${file} has checksum ${actual} but the manifest says ${expected}: the file is damaged ` +
        `or was edited; ${REPACK}`,
    );
    this.name = "FileChecksumError";
  }
}

/** Throws PackedFileError unless path is a file of exactly `bytes` bytes. */
export function checkFileSize(path: string, bytes: number): void {
  let size: number;
  try {
    size = Deno.statSync(path).size;
  } catch (e) {
    throw new PackedFileError(path, `cannot open ${path}: ${(e as Error).message}; ${REPACK}`);
  }
  if (size !== bytes) {
    throw new PackedFileError(
      path,
      `${path} is ${size} bytes but the manifest says ${bytes}: it is ` +
        `${size < bytes ? "truncated" : "longer than packed"} or from another pack; ${REPACK}`,
    );
  }
}

/** Throws TensorChecksumError unless bytes (the tensor's view of file) hash to its checksum. */
export function verifyBaseTensor(
  hasher: RecordHasher,
  name: string,
  entry: BaseTensorEntry,
  bytes: Uint8Array,
  file: string,
): void {
  const actual = hasher.digest([bytes]);
  if (actual !== entry.checksum) throw new TensorChecksumError(name, file, entry.checksum, actual);
}

/** Throws PackedFileError or FileChecksumError unless dir/entry.name matches the manifest. */
export function verifyCopiedFile(hasher: RecordHasher, dir: string, entry: CopiedFile): void {
  const path = `${dir}/${entry.name}`;
  let bytes: Uint8Array;
  try {
    bytes = Deno.readFileSync(path);
  } catch (e) {
    throw new PackedFileError(
      path,
      `cannot read ${path} (packed beside the weights): ${(e as Error).message}; ${REPACK}`,
    );
  }
  if (bytes.length !== entry.bytes) {
    throw new PackedFileError(
      path,
      `${path} is ${bytes.length} bytes but the manifest says ${entry.bytes}: it is damaged ` +
        `or was edited; ${REPACK}`,
    );
  }
  const actual = hasher.digest([bytes]);
  if (actual !== entry.checksum) throw new FileChecksumError(path, entry.checksum, actual);
}
