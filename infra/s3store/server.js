'use strict';
/*
 * The local S3-compatible store of `ganpipe services up`: s3rver 3.7.1 (objects are files under DIR),
 * started as `node --openssl-legacy-provider server.js DIR ADDRESS PORT` with the credentials in
 * AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
 *
 * s3rver keeps every object on disk, so the bucket outlives the process. What this file adds, each
 * found by a client that failed against plain s3rver:
 *  - aws-chunked request bodies are decoded. The AWS C++ SDK in pyarrow (Ray's checkpoints) sends
 *    `Content-Encoding: aws-chunked` with a trailing checksum; s3rver stored the chunk framing as
 *    the object (a 2-byte JSON came back as 51 bytes). The decoded length is checked against
 *    x-amz-decoded-content-length: a short body fails the request instead of becoming an object.
 *  - writes are atomic: an object (and a multipart part) is written to a temporary file, fsynced and
 *    renamed, its md5 and metadata sidecars first. s3rver wrote in place, so a store killed mid-PUT
 *    left a torn object (or an overwrite lost the old one), and it answered a PUT before the file was
 *    flushed. Temporary files of a killed store are removed at start.
 *  - listings are in S3's key order. s3rver walked directories, which puts "a/b/c" before "a/b-c";
 *    paging (start-after = the last key of a page) could then skip keys.
 *  - the credentials are the ones given (s3rver only knows S3RVER/S3RVER). Like s3rver (and moto),
 *    the store checks the access key id, not the SigV4 signature: it listens on 127.0.0.1 only.
 * `--openssl-legacy-provider`: s3rver's ListObjectsV2 continuation tokens use DES, which OpenSSL 3
 * leaves out otherwise (every truncated listing answered 500).
 */
const crypto = require('crypto');
const fs = require('fs-extra');
const path = require('path');
const { Readable, Transform, pipeline } = require('stream');
const { promisify } = require('util');

const S3rver = require('s3rver');
const AWSAccount = require('s3rver/lib/models/account');
const S3Object = require('s3rver/lib/models/object');
const FilesystemStore = require('s3rver/lib/stores/filesystem');

const pump = promisify(pipeline);
const OBJECT_SUFFIX = '._S3rver_object';
const TMP = /\.ganpipe-\d+-\d+\.tmp$/;
let seq = 0;
const byteOrder = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** Write `content` (a Buffer or a stream) to a temporary file beside `final`, fsync, rename. */
async function writeAtomically(final, content) {
  const tmp = `${final}.ganpipe-${process.pid}-${++seq}.tmp`;
  const md5 = crypto.createHash('md5');
  let size = 0;
  try {
    await fs.mkdirp(path.dirname(final));
    const source = Buffer.isBuffer(content) ? Readable.from([content]) : content;
    const count = new Transform({
      transform(chunk, encoding, done) {
        md5.update(chunk);
        size += chunk.length;
        done(null, chunk);
      },
    });
    await pump(source, count, fs.createWriteStream(tmp));
    const fd = await fs.open(tmp, 'r+');
    try {
      await fs.fsync(fd);
    } finally {
      await fs.close(fd);
    }
    await fs.rename(tmp, final);
  } catch (err) {
    await fs.remove(tmp);
    throw err;
  }
  return { size, md5: md5.digest('hex') };
}

class DurableStore extends FilesystemStore {
  async putMetadata(bucket, key, metadata, md5) {
    const json = {
      ...Object.fromEntries(Object.entries(metadata).filter(([k]) => S3Object.ALLOWED_METADATA.includes(k))),
      ...Object.fromEntries(Object.entries(metadata).filter(([k]) => k.startsWith('x-amz-meta-'))),
    };
    if (md5) await writeAtomically(this.getResourcePath(bucket, key, 'object.md5'), Buffer.from(md5));
    await writeAtomically(this.getResourcePath(bucket, key, 'metadata.json'),
      Buffer.from(JSON.stringify(json, null, 2)));
  }

  // the object file is renamed into place last: it is the commit point of a PUT
  async putObject(object) {
    const final = this.getResourcePath(object.bucket, object.key, 'object');
    const tmp = `${final}.ganpipe-${process.pid}-${++seq}.tmp`;
    try {
      const { size, md5 } = await writeAtomically(tmp, object.content);
      await this.putMetadata(object.bucket, object.key, object.metadata, md5);
      await fs.rename(tmp, final);
      return { size, md5 };
    } catch (err) {
      await fs.remove(tmp);
      throw err;
    }
  }

  async putPart(bucket, uploadId, partNumber, content) {
    const part = path.join(this.getResourcePath(bucket, undefined, 'uploads'), uploadId, partNumber.toString());
    const { size, md5 } = await writeAtomically(part, content);
    await writeAtomically(`${part}.md5`, Buffer.from(md5));
    return { size, md5 };
  }

  // a copy is a PUT whose body is the source object: atomic like any other
  async copyObject(srcBucket, srcKey, destBucket, destKey, replacementMetadata) {
    const src = await this.getObject(srcBucket, srcKey);
    const metadata = replacementMetadata || src.metadata;
    await this.putObject(new S3Object(destBucket, destKey, src.content, metadata));
    return this.getMetadata(destBucket, destKey);
  }

  // every key under the prefix, sorted as S3 sorts them, then start-after / delimiter / max-keys
  async listObjects(bucket, options) {
    const { delimiter = '', startAfter = '', prefix = '', maxKeys = Infinity } = options;
    const bucketPath = this.getBucketPath(bucket);
    const keys = [];
    const walk = dir => {
      for (const name of fs.readdirSync(dir)) {
        const full = path.posix.join(dir, name);
        if (fs.statSync(full).isDirectory()) {
          const rel = full.slice(bucketPath.length + 1) + '/';
          if (rel.startsWith(prefix) || prefix.startsWith(rel)) walk(full);  // prune outside the prefix
        } else if (name.endsWith(OBJECT_SUFFIX)) {
          const key = FilesystemStore.decodeKeyPath(full.slice(bucketPath.length + 1, -OBJECT_SUFFIX.length));
          if (key.startsWith(prefix)) keys.push(key);
        }
      }
    };
    walk(bucketPath);
    keys.sort(byteOrder);
    const out = [];
    const commonPrefixes = new Set();
    let isTruncated = false;
    for (const key of keys) {
      if (startAfter && byteOrder(key, startAfter) <= 0) continue;
      const idx = delimiter ? key.slice(prefix.length).indexOf(delimiter) : -1;
      const common = idx === -1 ? null : key.slice(0, prefix.length + idx + delimiter.length);
      if (common !== null && commonPrefixes.has(common)) continue;
      // as s3rver: max-keys counts objects, and the next page starts after the last one (so a page
      // ends at an object: a common prefix after it would be listed again)
      if (out.length >= maxKeys) {
        isTruncated = true;
        break;
      }
      if (common !== null) commonPrefixes.add(common);
      else out.push(key);
    }
    const metadata = await Promise.all(out.map(key => this.getMetadata(bucket, key).catch(err => {
      if (err.code === 'ENOENT') return undefined;  // deleted while listing
      throw err;
    })));
    return {
      objects: out.map((key, i) => metadata[i] && new S3Object(bucket, key, null, metadata[i])).filter(Boolean),
      commonPrefixes: [...commonPrefixes].sort(),
      isTruncated,
    };
  }
}

/** A Transform that turns an aws-chunked body (`hex-size[;ext]\r\n data \r\n ... 0\r\n trailers \r\n`)
 *  back into the object's bytes, and fails unless exactly `expected` bytes came out. */
function decodeAwsChunked(expected) {
  let buf = Buffer.alloc(0);
  let remaining = 0; // data bytes left in the current chunk
  let state = 'size'; // size -> data -> crlf -> size ... -> trailer
  let total = 0;
  return new Transform({
    transform(chunk, encoding, done) {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (state === 'size') {
          const eol = buf.indexOf('\r\n');
          if (eol === -1) break;
          remaining = parseInt(buf.slice(0, eol).toString().split(';')[0], 16);
          if (Number.isNaN(remaining)) return done(new Error('aws-chunked: bad chunk header'));
          buf = buf.slice(eol + 2);
          state = remaining === 0 ? 'trailer' : 'data';
        } else if (state === 'data') {
          if (!buf.length) break;
          const take = buf.slice(0, remaining);
          this.push(take);
          total += take.length;
          remaining -= take.length;
          buf = buf.slice(take.length);
          if (remaining === 0) state = 'crlf';
        } else if (state === 'crlf') {
          if (buf.length < 2) break;
          buf = buf.slice(2);
          state = 'size';
        } else {
          buf = Buffer.alloc(0); // trailing checksum headers: the length check below guards the body
          break;
        }
      }
      done();
    },
    flush(done) {
      if (state !== 'trailer' || (expected !== undefined && total !== expected)) {
        return done(new Error(`aws-chunked body ended after ${total} of ${expected} bytes`));
      }
      done();
    },
  });
}

/** Koa middleware: hand the controllers the decoded body, with the headers S3 itself would keep. */
async function awsChunked(ctx, next) {
  const headers = ctx.req.headers;
  const encodings = (headers['content-encoding'] || '').split(',').map(s => s.trim()).filter(Boolean);
  const streaming = String(headers['x-amz-content-sha256'] || '').startsWith('STREAMING-');
  if (encodings.includes('aws-chunked') || streaming) {
    const decoded = headers['x-amz-decoded-content-length'];
    const expected = decoded === undefined ? undefined : Number(decoded);
    const rest = encodings.filter(e => e !== 'aws-chunked');
    if (rest.length) headers['content-encoding'] = rest.join(', ');
    else delete headers['content-encoding'];
    if (expected !== undefined) headers['content-length'] = String(expected);
    const body = ctx.req.pipe(decodeAwsChunked(expected));
    ctx.req.on('error', err => body.destroy(err));
    ctx.req = body; // koa's ctx.request keeps the original for url, method and headers
  }
  return next();
}

/** A killed store can leave temporary files behind; none of them is an object. */
function removeTemporaries(dir) {
  for (const name of fs.readdirSync(dir)) {
    const full = path.join(dir, name);
    if (fs.statSync(full).isDirectory()) removeTemporaries(full);
    else if (TMP.test(name)) fs.removeSync(full);
  }
}

async function main() {
  const [directory, address, port] = process.argv.slice(2);
  const { AWS_ACCESS_KEY_ID: keyId, AWS_SECRET_ACCESS_KEY: secret } = process.env;
  if (!directory || !address || !port || !keyId || !secret) {
    console.error('usage: AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... node --openssl-legacy-provider ' +
      'server.js DIR ADDRESS PORT');
    process.exit(2);
  }
  fs.mkdirpSync(directory);
  removeTemporaries(directory);
  AWSAccount.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
  AWSAccount.DUMMY_ACCOUNT.createKeyPair(keyId, secret);
  const server = new S3rver({ directory, address, port: Number(port), vhostBuckets: false });
  server.store = server.context.store = new DurableStore(directory);
  server.middleware.unshift(awsChunked); // before s3rver's own middleware reads the body
  server.logger.transports[0].level = process.env.GANPIPE_S3_LOG_LEVEL || 'warn'; // not a line per request
  const { address: host, port: bound } = await server.run();
  console.log(`ganpipe s3store: s3rver ${require('s3rver/package.json').version} on ${host}:${bound}, data in ${directory}`);
}

main().catch(err => {
  console.error(err);
  process.exit(1);
});
