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
//!
//! # Bounds
//!
//! The filter sits in front of h2's own limits, so it keeps its own, whatever the client sends:
//!
//! - A frame it has no need to look at (anything but the HEADERS and CONTINUATION frames of a
//!   block it follows) is handed on as its bytes arrive, however long the frame says it is.
//! - It holds at most one header block: frames of at most [`MAX_FRAME_BYTES`], at most
//!   [`MAX_BLOCK_BYTES`] of them, decoding to at most [`MAX_LIST_BYTES`] of fields.
//!
//! A block it cannot follow (past those bounds, malformed, undecodable, interrupted) is given
//! up on. Before the first block is judged, everything held and the rest of the connection go
//! to h2 untouched, and h2 reports the problem in its own way (FRAME_SIZE_ERROR,
//! ENHANCE_YOUR_CALM, COMPRESSION_ERROR, ...). Once rewriting, h2's HPACK context can no longer
//! follow the client's, so [`AuthorityFilter::feed`] fails with `InvalidData` from then on and
//! the connection is closed.

use std::io;

use loona_hpack::Decoder;
use loona_hpack::encoder::encode_integer_into;

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Every frame starts with a 9-byte header (RFC 9113, section 4.1).
const FRAME_HEADER_BYTES: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame every HTTP/2 peer must accept, and the SETTINGS_MAX_FRAME_SIZE hyper has
/// h2 advertise: rewritten blocks are split to fit it, and a header-block frame declaring more
/// is not collected (h2 answers it with FRAME_SIZE_ERROR).
const MAX_FRAME_BYTES: usize = 16_384;
/// The most bytes of frames (headers and padding included) the filter collects for one header
/// block. hyper has h2 refuse header lists over 16 KiB decoded, and a list that size encodes in
/// about as many bytes (an encoder only Huffman-codes a string when that makes it shorter),
/// plus frame headers and padding; four times that takes any block h2 would accept, while a
/// connection never makes the filter hold more than this.
const MAX_BLOCK_BYTES: usize = 64 * 1024;
/// The largest decoded header list, counted as RFC 7541 counts it, the filter re-encodes. A
/// block of one-byte references to a 4 KiB table entry decodes to 4,000 times its size (an
/// HPACK "bomb"); the filter stops keeping fields past this bound, which, like
/// [`MAX_BLOCK_BYTES`], is four times the 16 KiB list h2 accepts.
const MAX_LIST_BYTES: usize = 64 * 1024;
/// What a field adds to a header list's size besides its name and value (RFC 7541, 4.1).
const FIELD_OVERHEAD_BYTES: usize = 32;
/// The HPACK dynamic table size h2 advertises (SETTINGS_HEADER_TABLE_SIZE is left at 4,096):
/// a client's table size update past it is an error here, as it is in h2.
const MAX_TABLE_BYTES: usize = 4_096;

/// The filter's state for one connection; feed it what the client sent, in order.
pub(crate) struct AuthorityFilter {
    stage: Stage,
    /// Received bytes not yet judged: part of the preface, a frame header, or the header-block
    /// frame being collected. Never more than one frame.
    pending: Vec<u8>,
    /// Bytes of the current frame still to hand on as they arrive.
    passing: usize,
}

/// How far the filter has got with a connection.
enum Stage {
    /// Waiting for the preface.
    Preface,
    /// Reading frames until the first header block is complete.
    FirstBlock(Block),
    /// Rewriting every header block.
    Rewriting(Block),
    /// Not ours to touch: bytes pass straight through.
    PassThrough,
    /// Lost track of a rewritten connection's header blocks, for this reason: reads fail.
    Failed(&'static str),
}

/// The client's HPACK context and the header block being collected across HEADERS and
/// CONTINUATION frames.
struct Block {
    decoder: Decoder<'static>,
    /// The frames of the open block, exactly as received: at most [`MAX_BLOCK_BYTES`].
    frames: Vec<u8>,
    /// The open block's HEADERS frame: stream, flags and priority fields.
    opening: Option<Opening>,
}

/// What a rewritten block keeps of its HEADERS frame.
struct Opening {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
}

/// A frame's 9-byte header.
#[derive(Clone, Copy)]
struct FrameHead {
    /// The payload's length.
    length: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// What the filter does with a frame, judged from its header.
enum Verdict {
    /// Not part of a block the filter follows: hand it on as it arrives.
    Pass,
    /// Part of the block the filter follows: collect it whole.
    Collect,
    /// A block the filter will not follow, for this reason.
    GiveUp(&'static str),
}

/// A header block re-encoded for the server.
#[derive(Default)]
struct Rewritten {
    /// Every field as a literal without indexing, `:authority` as `host:port`.
    encoded: Vec<u8>,
    /// Whether an `:authority` had a scheme.
    scheme_qualified: bool,
}

impl Default for AuthorityFilter {
    fn default() -> Self {
        Self {
            stage: Stage::Preface,
            pending: Vec::new(),
            passing: 0,
        }
    }
}

impl AuthorityFilter {
    /// Whether bytes now go through untouched, so a reader may skip the filter.
    pub(crate) fn is_pass_through(&self) -> bool {
        matches!(self.stage, Stage::PassThrough) && self.pending.is_empty()
    }

    /// Takes bytes the client sent and appends what the server should read to `out`.
    ///
    /// # Errors
    ///
    /// `InvalidData` once a rewritten connection sends a header block the filter cannot follow
    /// (see the module docs), and on every call after that.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if let Stage::Failed(reason) = self.stage {
            return Err(rejected(reason));
        }
        while !input.is_empty() {
            input = match self.stage {
                Stage::PassThrough => {
                    out.append(&mut self.pending);
                    out.extend_from_slice(input);
                    return Ok(());
                }
                Stage::Failed(reason) => return Err(rejected(reason)),
                Stage::Preface => self.preface(input, out),
                Stage::FirstBlock(_) | Stage::Rewriting(_) => self.frame(input, out)?,
            };
        }
        Ok(())
    }

    /// The connection ended: hands over whatever is still held, as received.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if !matches!(self.stage, Stage::Failed(_)) {
            self.hand_over(out);
        }
    }

    /// The bytes the filter has allocated to hold what it has not judged yet.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        let block = match &self.stage {
            Stage::FirstBlock(block) | Stage::Rewriting(block) => block.frames.capacity(),
            Stage::Preface | Stage::PassThrough | Stage::Failed(_) => 0,
        };
        self.pending.capacity() + block
    }

    /// Collects and judges the preface; returns the input it did not take.
    fn preface<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        let rest = self.fill(PREFACE.len(), input);
        if !PREFACE.starts_with(&self.pending) {
            self.hand_over(out);
        } else if self.pending.len() == PREFACE.len() {
            out.append(&mut self.pending);
            self.stage = Stage::FirstBlock(Block::default());
        }
        rest
    }

    /// Takes the next piece of a frame from `input`; returns the input it did not take.
    fn frame<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> io::Result<&'a [u8]> {
        if self.passing > 0 {
            let (passed, rest) = input.split_at(self.passing.min(input.len()));
            out.extend_from_slice(passed);
            self.passing -= passed.len();
            return Ok(rest);
        }
        let input = self.fill(FRAME_HEADER_BYTES, input);
        let Some(head) = self.pending.first_chunk().map(FrameHead::parse) else {
            return Ok(input);
        };
        match self.judge(head) {
            Verdict::Pass => {
                out.append(&mut self.pending);
                self.passing = head.length;
                Ok(input)
            }
            Verdict::GiveUp(reason) => self.give_up(reason, out).map(|()| input),
            Verdict::Collect => {
                let input = self.fill(FRAME_HEADER_BYTES + head.length, input);
                if self.pending.len() == FRAME_HEADER_BYTES + head.length {
                    self.collect(head, out)?;
                }
                Ok(input)
            }
        }
    }

    /// Moves input into `pending` until it holds `want` bytes; returns the input left over.
    fn fill<'a>(&mut self, want: usize, input: &'a [u8]) -> &'a [u8] {
        let missing = want.saturating_sub(self.pending.len());
        let (taken, rest) = input.split_at(missing.min(input.len()));
        // Room for exactly this frame: a 16 KiB frame never leaves 32 KiB allocated.
        self.pending.reserve_exact(missing);
        self.pending.extend_from_slice(taken);
        rest
    }

    /// Decides from a frame's header whether the filter needs the frame.
    fn judge(&self, head: FrameHead) -> Verdict {
        let (Stage::FirstBlock(block) | Stage::Rewriting(block)) = &self.stage else {
            return Verdict::Pass;
        };
        match (&block.opening, head.kind) {
            (None, HEADERS) => {}
            (Some(opening), CONTINUATION) if opening.stream == head.stream => {}
            (None, _) => return Verdict::Pass,
            (Some(_), _) => return Verdict::GiveUp("a header block interrupted by another frame"),
        }
        if head.length > MAX_FRAME_BYTES {
            return Verdict::GiveUp("a header block frame over 16 KiB");
        }
        if block.frames.len() + FRAME_HEADER_BYTES + head.length > MAX_BLOCK_BYTES {
            return Verdict::GiveUp("a header block over 64 KiB");
        }
        Verdict::Collect
    }

    /// Adds the complete frame in `pending` to the open block, and finishes the block if the
    /// frame ends it.
    fn collect(&mut self, head: FrameHead, out: &mut Vec<u8>) -> io::Result<()> {
        let (Stage::FirstBlock(block) | Stage::Rewriting(block)) = &mut self.stage else {
            return Ok(());
        };
        if head.kind == HEADERS {
            let Some((_, priority)) = headers_fragment(head.flags, &self.pending[FRAME_HEADER_BYTES..])
            else {
                return self.give_up("a malformed HEADERS frame", out);
            };
            block.opening = Some(Opening {
                stream: head.stream,
                flags: head.flags,
                priority,
            });
        }
        block.frames.append(&mut self.pending);
        if head.flags & END_HEADERS != 0 {
            return self.finish_block(out);
        }
        Ok(())
    }

    /// Decodes the completed header block and decides what the server reads.
    fn finish_block(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let rewriting = matches!(self.stage, Stage::Rewriting(_));
        let (Stage::FirstBlock(block) | Stage::Rewriting(block)) = &mut self.stage else {
            return Ok(());
        };
        let Some(opening) = block.opening.take() else {
            return Ok(());
        };
        let rewritten = match block.rewrite(&opening) {
            Ok(rewritten) => rewritten,
            Err(reason) => return self.give_up(reason, out),
        };
        if !rewriting && !rewritten.scheme_qualified {
            self.hand_over(out);
            return Ok(());
        }
        // Freed rather than cleared: between blocks the filter holds none.
        block.frames = Vec::new();
        write_block(&opening, &rewritten.encoded, out);
        self.stage = match std::mem::replace(&mut self.stage, Stage::PassThrough) {
            Stage::FirstBlock(block) => Stage::Rewriting(block),
            stage => stage,
        };
        Ok(())
    }

    /// Stops following header blocks, for `reason`. Before the first block is judged, h2 gets
    /// everything untouched and reports the problem itself; once rewriting, h2's HPACK context
    /// cannot follow the client's any more, so the connection fails.
    fn give_up(&mut self, reason: &'static str, out: &mut Vec<u8>) -> io::Result<()> {
        if matches!(self.stage, Stage::Rewriting(_) | Stage::Failed(_)) {
            self.stage = Stage::Failed(reason);
            self.pending = Vec::new();
            return Err(rejected(reason));
        }
        self.hand_over(out);
        Ok(())
    }

    /// Hands everything held to `out`, as received, and lets the rest of the connection through.
    fn hand_over(&mut self, out: &mut Vec<u8>) {
        if let Stage::FirstBlock(block) | Stage::Rewriting(block) = &self.stage {
            out.extend_from_slice(&block.frames);
        }
        out.extend(std::mem::take(&mut self.pending));
        self.stage = Stage::PassThrough;
    }
}

impl Default for Block {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        // Otherwise a client's size update could grow the table past what h2 allows.
        decoder.set_max_allowed_table_size(MAX_TABLE_BYTES);
        Self {
            decoder,
            frames: Vec::new(),
            opening: None,
        }
    }
}

impl Block {
    /// Decodes the collected block with the client's HPACK context and re-encodes it; `Err`
    /// says why the block cannot be followed.
    fn rewrite(&mut self, opening: &Opening) -> Result<Rewritten, &'static str> {
        let fragment = fragment_of(opening.flags, &self.frames).ok_or("a malformed header block")?;
        let mut rewritten = Rewritten::default();
        let mut list_bytes = 0_usize;
        self.decoder
            .decode_with_cb(&fragment, |name, value| {
                list_bytes = list_bytes.saturating_add(name.len() + value.len() + FIELD_OVERHEAD_BYTES);
                // The decoder has to see the whole block to keep the client's table, and the
                // callback cannot stop it, so fields past the bound are dropped, not kept.
                if list_bytes <= MAX_LIST_BYTES {
                    rewritten.add(&name, &value);
                }
            })
            .map_err(|_| "an undecodable header block")?;
        if list_bytes > MAX_LIST_BYTES {
            return Err("a header list over 64 KiB");
        }
        Ok(rewritten)
    }
}

impl Rewritten {
    /// Re-encodes one field, `:authority` as `host:port` if it has a scheme.
    fn add(&mut self, name: &[u8], value: &[u8]) {
        let fixed = if name == b":authority" {
            host_port(value)
        } else {
            None
        };
        self.scheme_qualified |= fixed.is_some();
        encode_literal(name, fixed.unwrap_or(value), &mut self.encoded);
    }
}

impl FrameHead {
    /// Reads a frame header; the reserved bit of the stream identifier is ignored, as h2 does.
    fn parse(bytes: &[u8; FRAME_HEADER_BYTES]) -> Self {
        Self {
            length: usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }
}

/// The error a rewritten connection's reads fail with.
fn rejected(reason: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("closing an HTTP/2 connection whose :authority is being rewritten: {reason}"),
    )
}

/// A block's fragment out of its frames (HEADERS then CONTINUATIONs), without padding or
/// priority fields; `flags` are the HEADERS frame's.
fn fragment_of(flags: u8, mut frames: &[u8]) -> Option<Vec<u8>> {
    let mut fragment = Vec::with_capacity(frames.len());
    let mut first = true;
    while let Some((head, rest)) = frames.split_first_chunk() {
        let (payload, rest) = rest.split_at_checked(FrameHead::parse(head).length)?;
        let piece = if first {
            headers_fragment(flags, payload)?.0
        } else {
            payload
        };
        fragment.extend_from_slice(piece);
        frames = rest;
        first = false;
    }
    Some(fragment)
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

/// Writes a frame's 9-byte header.
fn write_frame_header(length: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    let length = u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&length[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

#[cfg(test)]
mod tests;
