//! Repairs the `:authority` that etcdctl 3.4 sends when it dials a member by URL.
//!
//! etcdctl 3.4 dials `passthrough:///http://host:port` for `endpoint status --cluster`,
//! `endpoint hashkv` and friends, so grpc-go sends `http://host:port` as the request's
//! `:authority`. etcd's grpc-go server accepts that; h2 (under tonic) rejects it as a malformed
//! authority and resets the stream with PROTOCOL_ERROR, with no option to relax the check
//! (hyperium/h2#525). So the read side of a client connection passes through this filter:
//!
//! - It looks at the connection's first request header block only. If that block's
//!   `:authority` has no scheme (every other client), the block and everything after it pass
//!   through untouched and unparsed: the filter costs a few frame headers per connection.
//! - If it has a scheme, the connection is *rewritten* from then on: every header block is
//!   decoded with the client's HPACK context and re-encoded with `host:port` as `:authority`,
//!   every field as a literal *without indexing*, so the server's HPACK table stays empty and
//!   can never disagree with the client's. Other frames pass through.
//!
//! Anything that is not HTTP/2 with prior knowledge (HTTP/1.1 `/health`, TLS) passes through.

use loona_hpack::Decoder;
use loona_hpack::encoder::encode_integer_into;

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame every HTTP/2 peer must accept; rewritten blocks are split to fit it.
const MAX_FRAME_BYTES: usize = 16_384;

/// The filter's state for one connection; feed it what the client sent, in order.
pub(crate) struct AuthorityFilter {
    stage: Stage,
    /// Received bytes not yet judged (an incomplete preface or frame).
    pending: Vec<u8>,
}

enum Stage {
    /// Waiting for the preface.
    Preface,
    /// Reading frames until the first header block is complete.
    FirstBlock(Block),
    /// Rewriting every header block.
    Rewriting(Block),
    /// Not ours to touch: bytes pass straight through.
    PassThrough,
}

/// A header block being collected across HEADERS and CONTINUATION frames.
#[derive(Default)]
struct Block {
    decoder: Decoder<'static>,
    /// The frames of the open block, exactly as received.
    frames: Vec<u8>,
    /// The open block's fragments, without padding or priority fields.
    fragment: Vec<u8>,
    /// The open block's HEADERS frame: stream, flags and priority fields.
    opening: Option<Opening>,
}

struct Opening {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
}

impl Default for AuthorityFilter {
    fn default() -> Self {
        Self {
            stage: Stage::Preface,
            pending: Vec::new(),
        }
    }
}

impl AuthorityFilter {
    /// Whether bytes now go through untouched, so a reader may skip the filter.
    pub(crate) fn is_pass_through(&self) -> bool {
        matches!(self.stage, Stage::PassThrough) && self.pending.is_empty()
    }

    /// Takes bytes the client sent and appends what the server should read to `out`.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.is_pass_through() {
            out.extend_from_slice(input);
            return;
        }
        self.pending.extend_from_slice(input);
        loop {
            let progressed = match &mut self.stage {
                Stage::PassThrough => {
                    out.append(&mut self.pending);
                    false
                }
                Stage::Preface => self.preface(out),
                Stage::FirstBlock(_) | Stage::Rewriting(_) => self.frame(out),
            };
            if !progressed {
                return;
            }
        }
    }

    /// Judges the preface once enough of it is here; true if the stage moved on.
    fn preface(&mut self, out: &mut Vec<u8>) -> bool {
        let seen = self.pending.len().min(PREFACE.len());
        if self.pending[..seen] != PREFACE[..seen] {
            self.stage = Stage::PassThrough;
            return true;
        }
        if seen < PREFACE.len() {
            return false;
        }
        out.extend(self.pending.drain(..PREFACE.len()));
        self.stage = Stage::FirstBlock(Block::default());
        true
    }

    /// Handles one complete frame from `pending`; false if none is complete yet.
    fn frame(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(header) = self.pending.get(..FRAME_HEADER_BYTES) else {
            return false;
        };
        let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let total = FRAME_HEADER_BYTES + length;
        if self.pending.len() < total {
            return false;
        }
        let frame: Vec<u8> = self.pending.drain(..total).collect();
        let block = match &mut self.stage {
            Stage::FirstBlock(block) | Stage::Rewriting(block) => block,
            Stage::Preface | Stage::PassThrough => {
                out.extend_from_slice(&frame);
                return true;
            }
        };
        let payload = &frame[FRAME_HEADER_BYTES..];
        match kind {
            HEADERS if block.opening.is_none() => {
                let Some((fragment, priority)) = headers_fragment(flags, payload) else {
                    // Malformed: let the server see it as sent and reject it.
                    out.extend_from_slice(&frame);
                    self.stage = Stage::PassThrough;
                    return true;
                };
                block.fragment.extend_from_slice(fragment);
                block.opening = Some(Opening {
                    stream,
                    flags,
                    priority,
                });
            }
            CONTINUATION if block.opening.is_some() => block.fragment.extend_from_slice(payload),
            _ if block.opening.is_none() => {
                out.extend_from_slice(&frame);
                return true;
            }
            _ => {
                // A frame inside a header block is a protocol error the server reports.
                out.extend_from_slice(&block.frames);
                out.extend_from_slice(&frame);
                self.stage = Stage::PassThrough;
                return true;
            }
        }
        block.frames.extend_from_slice(&frame);
        if flags & END_HEADERS != 0 {
            self.finish_block(out);
        }
        true
    }

    /// The connection ended: hands over whatever is still held, as received.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if let Stage::FirstBlock(block) | Stage::Rewriting(block) = &mut self.stage {
            out.append(&mut block.frames);
        }
        out.append(&mut self.pending);
        self.stage = Stage::PassThrough;
    }

    /// Decodes the completed header block and decides what the server reads.
    fn finish_block(&mut self, out: &mut Vec<u8>) {
        let rewriting = matches!(self.stage, Stage::Rewriting(_));
        let (Stage::FirstBlock(block) | Stage::Rewriting(block)) = &mut self.stage else {
            return;
        };
        let frames = std::mem::take(&mut block.frames);
        let fragment = std::mem::take(&mut block.fragment);
        let Some(opening) = block.opening.take() else {
            return;
        };
        let Ok(fields) = block.decoder.decode(&fragment) else {
            // The server's own decoder will report it.
            out.extend_from_slice(&frames);
            self.stage = Stage::PassThrough;
            return;
        };
        let scheme_qualified = fields
            .iter()
            .any(|(name, value)| name == b":authority" && host_port(value).is_some());
        if !rewriting && !scheme_qualified {
            out.extend_from_slice(&frames);
            self.stage = Stage::PassThrough;
            return;
        }
        let mut encoded = Vec::with_capacity(fragment.len() * 2);
        for (name, value) in &fields {
            let value = match host_port(value) {
                Some(fixed) if name == b":authority" => fixed,
                _ => value,
            };
            encode_literal(name, value, &mut encoded);
        }
        write_block(&opening, &encoded, out);
        if !rewriting {
            let block = std::mem::take(block);
            self.stage = Stage::Rewriting(block);
        }
    }
}

/// A HEADERS payload's block fragment and priority fields, without padding.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(&[u8], Option<[u8; 5]>)> {
    let (padding, mut rest) = if flags & PADDED != 0 {
        let (&padding, rest) = payload.split_first()?;
        (usize::from(padding), rest)
    } else {
        (0, payload)
    };
    let priority = if flags & PRIORITY != 0 {
        let (fields, after) = rest.split_first_chunk::<5>()?;
        rest = after;
        Some(*fields)
    } else {
        None
    };
    let fragment = rest.get(..rest.len().checked_sub(padding)?)?;
    Some((fragment, priority))
}

/// `host:port` out of a scheme-qualified authority such as `http://host:port` or
/// `https://host:port/`; `None` for an authority that has no scheme.
fn host_port(authority: &[u8]) -> Option<&[u8]> {
    let start = authority.windows(3).position(|w| w == b"://")? + 3;
    let rest = &authority[start..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Some(&rest[..end])
}

/// One field as a literal without indexing, with a literal name and no Huffman coding
/// (RFC 7541, section 6.2.2).
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    for string in [name, value] {
        // Writing into a Vec cannot fail.
        let _ = encode_integer_into(string.len(), 7, 0, out);
        out.extend_from_slice(string);
    }
}

/// Frames `block` as one HEADERS frame and as many CONTINUATION frames as it needs.
fn write_block(opening: &Opening, block: &[u8], out: &mut Vec<u8>) {
    let priority: &[u8] = opening.priority.as_ref().map_or(&[], |p| &p[..]);
    let first_room = MAX_FRAME_BYTES - priority.len();
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = opening.flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    write_frame_header(priority.len() + first.len(), HEADERS, flags, opening.stream, out);
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME_BYTES));
        rest = after;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        write_frame_header(chunk.len(), CONTINUATION, flags, opening.stream, out);
        out.extend_from_slice(chunk);
    }
}

fn write_frame_header(length: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    let length = u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&length[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

#[cfg(test)]
mod tests;
