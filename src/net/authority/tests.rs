use std::time::Duration;

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::net::CoalescingStream;

const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame_header(payload.len(), kind, flags, stream, &mut out);
    out.extend_from_slice(payload);
    out
}

fn request(authority: &str, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

/// What a gRPC client writes: preface, SETTINGS, then per request HEADERS and a DATA frame.
/// The encoder indexes fields, so later blocks refer to the client's dynamic table.
fn client_bytes(requests: &[Vec<(Vec<u8>, Vec<u8>)>]) -> Vec<u8> {
    let mut encoder = Encoder::new();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for (i, fields) in requests.iter().enumerate() {
        let stream = 2 * i as u32 + 1;
        let block = encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
        out.extend(frame(HEADERS, END_HEADERS, stream, &block));
        out.extend(frame(DATA, END_STREAM, stream, b"\0\0\0\0\x02hi"));
    }
    out
}

/// A frame as the server reads it; header blocks decoded with one decoder, as h2 does.
#[derive(Debug, PartialEq)]
enum Seen {
    Headers {
        stream: u32,
        end_stream: bool,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Other {
        kind: u8,
        stream: u32,
        payload: Vec<u8>,
    },
}

fn server_reads(bytes: &[u8]) -> Vec<Seen> {
    assert!(bytes.starts_with(PREFACE), "the preface must pass through first");
    let mut rest = &bytes[PREFACE.len()..];
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    let mut open: Option<(u32, bool, Vec<u8>)> = None;
    while !rest.is_empty() {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        assert!(length <= MAX_FRAME_BYTES, "a frame of {length} bytes");
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length];
        rest = &rest[FRAME_HEADER_BYTES + length..];
        match kind {
            HEADERS => {
                assert!(open.is_none(), "HEADERS inside a block");
                let (fragment, _) = headers_fragment(flags, payload).unwrap();
                open = Some((stream, flags & END_STREAM != 0, fragment.to_vec()));
            }
            CONTINUATION => open.as_mut().unwrap().2.extend_from_slice(payload),
            _ => {
                assert!(open.is_none(), "frame {kind} inside a header block");
                seen.push(Seen::Other {
                    kind,
                    stream,
                    payload: payload.to_vec(),
                });
                continue;
            }
        }
        if flags & END_HEADERS != 0 {
            let (stream, end_stream, block) = open.take().unwrap();
            let fields = decoder.decode(&block).expect("the server decodes every block");
            seen.push(Seen::Headers {
                stream,
                end_stream,
                fields,
            });
        }
    }
    assert!(open.is_none(), "a header block left open");
    seen
}

fn filter_in_chunks(input: &[u8], chunk: usize) -> Vec<u8> {
    let mut filter = AuthorityFilter::default();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        filter.feed(piece, &mut out).unwrap();
    }
    out
}

fn headers_of(seen: &[Seen]) -> Vec<&Vec<(Vec<u8>, Vec<u8>)>> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Headers { fields, .. } => Some(fields),
            Seen::Other { .. } => None,
        })
        .collect()
}

#[test]
fn scheme_qualified_authority_becomes_host_port_on_every_request() {
    let sent = [
        request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/Status"),
        request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/Status"),
        request("http://127.0.0.1:2379", "/etcdserverpb.KV/Range"),
    ];
    let input = client_bytes(&sent);
    let expected: Vec<_> = sent
        .iter()
        .map(|fields| {
            let mut fields = fields.clone();
            fields[3].1 = b"127.0.0.1:2379".to_vec();
            fields
        })
        .collect();
    for chunk in [1, 7, 64, input.len()] {
        let seen = server_reads(&filter_in_chunks(&input, chunk));
        assert_eq!(
            headers_of(&seen),
            expected.iter().collect::<Vec<_>>(),
            "chunk {chunk}"
        );
        let data: Vec<_> = seen
            .iter()
            .filter(|s| matches!(s, Seen::Other { kind: DATA, .. }))
            .collect();
        assert_eq!(data.len(), 3, "DATA frames pass through (chunk {chunk})");
        assert!(
            seen.iter().any(|s| matches!(
                s,
                Seen::Other {
                    kind: SETTINGS,
                    stream: 0,
                    ..
                }
            )),
            "SETTINGS passes through"
        );
    }
}

#[test]
fn plain_authority_passes_every_byte_through_untouched() {
    let input = client_bytes(&[
        request("127.0.0.1:2379", "/etcdserverpb.KV/Put"),
        request("127.0.0.1:2379", "/etcdserverpb.KV/Range"),
    ]);
    for chunk in [1, 5, input.len()] {
        assert_eq!(filter_in_chunks(&input, chunk), input, "chunk {chunk}");
    }
    let mut filter = AuthorityFilter::default();
    let mut out = Vec::new();
    filter.feed(&input[..input.len() - 1], &mut out).unwrap();
    assert!(filter.is_pass_through(), "judged after the first block");
    assert_eq!(out, input[..input.len() - 1], "nothing held back once judged");
}

#[test]
fn http1_and_tls_pass_through() {
    for input in [
        &b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x02, 0x00][..],
    ] {
        assert_eq!(filter_in_chunks(input, 1), input);
        let mut filter = AuthorityFilter::default();
        filter.feed(&input[..1], &mut Vec::new()).unwrap();
        assert!(filter.is_pass_through());
    }
}

#[test]
fn padded_prioritised_continued_block_is_rewritten_and_split() {
    let mut fields = request("https://node-1.example:2379/", "/etcdserverpb.KV/Range");
    fields.push((b"big".to_vec(), vec![b'x'; 40_000]));
    let block = Encoder::new().encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
    let (head, tail) = block.split_at(1000);
    let mut payload = vec![3u8];
    payload.extend_from_slice(&[0, 0, 0, 0, 16]);
    payload.extend_from_slice(head);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
    // Frames no larger than the server accepts: a bigger one is left to h2 to reject.
    let pieces: Vec<_> = tail.chunks(MAX_FRAME_BYTES).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let flags = if i + 1 == pieces.len() { END_HEADERS } else { 0 };
        input.extend(frame(CONTINUATION, flags, 1, piece));
    }

    let seen = server_reads(&filter_in_chunks(&input, 999));
    fields[3].1 = b"node-1.example:2379".to_vec();
    assert_eq!(
        seen,
        vec![Seen::Headers {
            stream: 1,
            end_stream: true,
            fields
        }]
    );
}

#[test]
fn host_port_strips_scheme_and_path_only() {
    assert_eq!(host_port(b"http://127.0.0.1:2379"), Some(&b"127.0.0.1:2379"[..]));
    assert_eq!(host_port(b"unix://sock/x"), Some(&b"sock"[..]));
    assert_eq!(host_port(b"127.0.0.1:2379"), None);
    assert_eq!(host_port(b""), None);
}

/// The most a filter may allocate: one block of frames (a `Vec`'s capacity can reach twice its
/// length) and one frame being collected.
const HELD_LIMIT: usize = 2 * MAX_BLOCK_BYTES + FRAME_HEADER_BYTES + MAX_FRAME_BYTES;

/// A frame header alone, declaring `length` bytes of payload.
fn frame_header(length: usize, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame_header(length, kind, flags, stream, &mut out);
    out
}

/// `block` as the HEADERS and CONTINUATION frames of `stream`.
fn block_frames(stream: u32, block: &[u8]) -> Vec<u8> {
    let opening = Opening {
        stream,
        flags: 0,
        priority: None,
    };
    let mut out = Vec::new();
    write_block(&opening, block, &mut out);
    out
}

/// A filter past the preface and SETTINGS, waiting for the first header block.
fn watching_filter() -> AuthorityFilter {
    let mut input = PREFACE.to_vec();
    input.extend(frame(SETTINGS, 0, 0, &[]));
    let mut filter = AuthorityFilter::default();
    let mut out = Vec::new();
    filter.feed(&input, &mut out).unwrap();
    assert_eq!(out, input);
    assert!(matches!(filter.stage, Stage::FirstBlock(_)));
    filter
}

/// A filter that has seen a scheme-qualified first block, so it rewrites the connection.
fn rewriting_filter() -> AuthorityFilter {
    let input = client_bytes(&[request(
        "http://127.0.0.1:2379",
        "/etcdserverpb.Maintenance/Status",
    )]);
    let mut filter = AuthorityFilter::default();
    filter.feed(&input, &mut Vec::new()).unwrap();
    assert!(matches!(filter.stage, Stage::Rewriting(_)));
    filter
}

/// An HPACK bomb that fits in [`MAX_BLOCK_BYTES`] of frames: a 4,000-byte field added to the
/// dynamic table, then one-byte references to it, ~250 MB decoded.
fn bomb_block() -> Vec<u8> {
    // A literal with incremental indexing and a literal name.
    let mut block = vec![0x40];
    for string in [&b"a"[..], &[b'x'; 4000]] {
        encode_integer_into(string.len(), 7, 0, &mut block).unwrap();
        block.extend_from_slice(string);
    }
    // Index 62 is the newest dynamic table entry (the static table has 61).
    block.resize(MAX_BLOCK_BYTES - 1024, 0x80 | 62);
    block
}

#[test]
fn continuation_flood_is_handed_on_unchanged_once_the_block_bound_is_hit() {
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(HEADERS, 0, 1, &[0x83, 0x86]));
    let continuation = frame(CONTINUATION, 0, 1, &[0x82; MAX_FRAME_BYTES]);
    let frames = std::iter::once(&opening[..]).chain(std::iter::repeat_n(&continuation[..], 10_000));
    let mut filter = AuthorityFilter::default();
    let (mut unread, mut out) = (Vec::new(), Vec::new());
    for chunk in frames.flat_map(|frame| frame.chunks(4096)) {
        unread.extend_from_slice(chunk);
        filter.feed(chunk, &mut out).unwrap();
        assert!(unread.starts_with(&out), "bytes come out as sent, in order");
        unread.drain(..out.len());
        out.clear();
        assert!(
            unread.len() <= MAX_BLOCK_BYTES,
            "{} bytes held back",
            unread.len()
        );
        assert!(
            filter.held_bytes() <= HELD_LIMIT,
            "{} bytes allocated",
            filter.held_bytes()
        );
    }
    assert!(unread.is_empty(), "everything handed on");
    assert!(filter.is_pass_through(), "h2 deals with the rest");
}

#[test]
fn frames_not_inspected_stream_through_as_they_arrive() {
    for (stage, mut filter) in [
        ("first block", watching_filter()),
        ("rewriting", rewriting_filter()),
    ] {
        let held = filter.held_bytes();
        let head = frame_header((1 << 24) - 1, DATA, 0, 1);
        let mut out = Vec::new();
        filter.feed(&head, &mut out).unwrap();
        assert_eq!(out, head, "{stage}: the frame header is handed on at once");
        for piece in vec![7; 1 << 20].chunks(1000) {
            out.clear();
            filter.feed(piece, &mut out).unwrap();
            assert_eq!(out, piece, "{stage}: payload is handed on as it arrives");
            assert!(
                filter.held_bytes() <= held.max(FRAME_HEADER_BYTES),
                "{stage}: held grew"
            );
        }
        assert!(
            !filter.is_pass_through(),
            "{stage}: still following header blocks"
        );
    }
}

#[test]
fn oversized_header_frame_goes_to_h2_at_once_before_the_first_block_is_judged() {
    let mut headers = PREFACE.to_vec();
    headers.extend(frame_header(MAX_FRAME_BYTES + 1, HEADERS, END_HEADERS, 1));
    let mut continuation = PREFACE.to_vec();
    continuation.extend(frame(HEADERS, 0, 1, &[0x82]));
    continuation.extend(frame_header(1 << 20, CONTINUATION, END_HEADERS, 1));
    for mut input in [headers, continuation] {
        input.extend([0; 100]);
        let mut filter = AuthorityFilter::default();
        let mut out = Vec::new();
        filter.feed(&input, &mut out).unwrap();
        assert_eq!(out, input, "held frames and what follows go to h2 as sent");
        assert!(filter.is_pass_through());
    }
}

#[test]
fn rewritten_connection_fails_on_an_oversized_frame() {
    let mut filter = rewriting_filter();
    let head = frame_header(MAX_FRAME_BYTES + 1, HEADERS, END_HEADERS, 3);
    let error = filter.feed(&head, &mut Vec::new()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(filter.feed(b"more", &mut Vec::new()).is_err(), "it stays failed");
    let mut rest = Vec::new();
    filter.finish(&mut rest);
    assert!(
        rest.is_empty() && !filter.is_pass_through(),
        "nothing reaches h2 any more"
    );
}

#[test]
fn rewritten_connection_fails_on_an_oversized_block() {
    let mut filter = rewriting_filter();
    let headers = frame(HEADERS, 0, 3, &[0x82; MAX_FRAME_BYTES]);
    let continuation = frame(CONTINUATION, 0, 3, &[0x82; MAX_FRAME_BYTES]);
    let mut result = filter.feed(&headers, &mut Vec::new());
    let mut frames = 1;
    while result.is_ok() && frames < 100 {
        result = filter.feed(&continuation, &mut Vec::new());
        frames += 1;
        assert!(
            filter.held_bytes() <= HELD_LIMIT,
            "{} bytes allocated",
            filter.held_bytes()
        );
    }
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
    assert_eq!(
        frames,
        MAX_BLOCK_BYTES / continuation.len() + 1,
        "fails at the first frame past the bound"
    );
}

#[test]
fn interrupted_block_goes_to_h2_before_the_first_block_and_fails_a_rewritten_connection() {
    let mut interrupted = frame(HEADERS, 0, 3, &[0x82]);
    interrupted.extend(frame(DATA, 0, 3, b"x"));
    let mut input = PREFACE.to_vec();
    input.extend(&interrupted);
    assert_eq!(filter_in_chunks(&input, 3), input);
    let error = rewriting_filter()
        .feed(&interrupted, &mut Vec::new())
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn hpack_bomb_is_not_expanded() {
    let bomb = block_frames(1, &bomb_block());
    assert!(
        bomb.len() <= MAX_BLOCK_BYTES,
        "within the block bound, so it is decoded"
    );
    let mut block = Block {
        frames: bomb.clone(),
        ..Block::default()
    };
    let opening = Opening {
        stream: 1,
        flags: END_HEADERS,
        priority: None,
    };
    assert_eq!(block.rewrite(&opening).err(), Some("a header list over 64 KiB"));

    let mut input = PREFACE.to_vec();
    input.extend(&bomb);
    let mut filter = AuthorityFilter::default();
    let mut out = Vec::new();
    filter.feed(&input, &mut out).unwrap();
    assert_eq!(out, input, "the first block goes to h2 unchanged");
    assert!(filter.is_pass_through());

    let error = rewriting_filter()
        .feed(&block_frames(3, &bomb_block()), &mut Vec::new())
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn table_size_update_past_what_h2_advertises_is_not_followed() {
    for (size, rewritten) in [(MAX_TABLE_BYTES, true), (MAX_TABLE_BYTES + 1, false)] {
        let mut block = Vec::new();
        encode_integer_into(size, 5, 0x20, &mut block).unwrap();
        encode_literal(b":authority", b"http://127.0.0.1:2379", &mut block);
        let mut input = PREFACE.to_vec();
        input.extend(block_frames(1, &block));
        let out = filter_in_chunks(&input, 5);
        assert_eq!(out != input, rewritten, "table size {size}");
    }
}

/// A client socket and the server's side of it.
async fn connected() -> (TcpStream, CoalescingStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (client, CoalescingStream::new(accepted).unwrap())
}

/// Reads exactly `n` bytes, failing the test if they do not come while the client waits.
async fn read_n(stream: &mut CoalescingStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
        .await
        .expect("bytes handed on while the connection stays open")
        .unwrap();
    got
}

#[tokio::test]
async fn coalescing_stream_hands_on_a_continuation_flood_as_it_arrives() {
    let (mut client, mut server) = connected().await;
    let continuation = frame(CONTINUATION, 0, 1, &[0x82; MAX_FRAME_BYTES]);
    // The filter holds the block until it passes the bound, then hands it all on...
    let mut sent = PREFACE.to_vec();
    sent.extend(frame(HEADERS, 0, 1, &[0x82]));
    for _ in 0..MAX_BLOCK_BYTES / MAX_FRAME_BYTES {
        sent.extend(&continuation);
    }
    client.write_all(&sent).await.unwrap();
    assert_eq!(read_n(&mut server, sent.len()).await, sent);
    // ...and from then on each frame as it comes, though the block never ends.
    for _ in 0..100 {
        client.write_all(&continuation).await.unwrap();
        assert_eq!(read_n(&mut server, continuation.len()).await, continuation);
    }
}

#[tokio::test]
async fn coalescing_stream_read_fails_when_a_rewritten_connection_sends_an_oversized_frame() {
    let (mut client, mut server) = connected().await;
    let mut sent = client_bytes(&[request("http://127.0.0.1:2379", "/etcdserverpb.KV/Range")]);
    sent.extend(frame_header(MAX_FRAME_BYTES + 1, HEADERS, END_HEADERS, 3));
    client.write_all(&sent).await.unwrap();
    let mut buf = vec![0; 64 * 1024];
    let error = loop {
        let read = tokio::time::timeout(Duration::from_secs(10), server.read(&mut buf))
            .await
            .expect("the read fails rather than waits");
        match read {
            Ok(0) => panic!("end of stream instead of an error"),
            Ok(_) => {}
            Err(error) => break error,
        }
    };
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}
