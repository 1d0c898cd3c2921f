use loona_hpack::{Decoder, Encoder};

use super::*;

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
        filter.feed(piece, &mut out);
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
    filter.feed(&input[..input.len() - 1], &mut out);
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
        filter.feed(&input[..1], &mut Vec::new());
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
    let (middle, last) = tail.split_at(tail.len() / 2);
    input.extend(frame(CONTINUATION, 0, 1, middle));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, last));

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
