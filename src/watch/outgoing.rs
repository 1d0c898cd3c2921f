//! What a watch stream's channel carries.
//!
//! One channel item is one response, or several responses that must reach the client together
//! and in order: the fragments of one response, or a catch-up window cut into responses at
//! revision boundaries. Sending them as one item keeps delivery all-or-nothing without
//! reserving one channel slot per part, so a response with more parts than the channel has
//! slots can still go out.

use concord_proto::etcdserverpb::WatchResponse;
use tokio::sync::mpsc;

/// One channel item: see the module docs. Boxed, so that an item is three words: a stream's
/// channel holds its items in blocks of 32 slots, and a thousand idle streams each keep one.
#[derive(Debug)]
pub enum Outgoing {
    /// A single response.
    One(Box<WatchResponse>),
    /// Responses that go out together, in this order.
    Many(Vec<WatchResponse>),
}

/// The sending half of a stream's channel.
pub type Sink = mpsc::Sender<Outgoing>;

impl From<WatchResponse> for Outgoing {
    fn from(response: WatchResponse) -> Self {
        Outgoing::One(Box::new(response))
    }
}

impl From<Vec<WatchResponse>> for Outgoing {
    fn from(mut responses: Vec<WatchResponse>) -> Self {
        match responses.len() {
            1 => Outgoing::One(Box::new(responses.remove(0))),
            _ => Outgoing::Many(responses),
        }
    }
}

/// The responses of an [`Outgoing`], in order.
pub enum Responses {
    /// What is left of a single response.
    One(Option<WatchResponse>),
    /// What is left of several.
    Many(std::vec::IntoIter<WatchResponse>),
}

impl Iterator for Responses {
    type Item = WatchResponse;

    fn next(&mut self) -> Option<WatchResponse> {
        match self {
            Responses::One(response) => response.take(),
            Responses::Many(responses) => responses.next(),
        }
    }
}

impl IntoIterator for Outgoing {
    type Item = WatchResponse;
    type IntoIter = Responses;

    fn into_iter(self) -> Responses {
        match self {
            Outgoing::One(response) => Responses::One(Some(*response)),
            Outgoing::Many(responses) => Responses::Many(responses.into_iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: i64) -> WatchResponse {
        WatchResponse {
            watch_id: id,
            ..Default::default()
        }
    }

    #[test]
    fn yields_its_responses_in_order() {
        let one: Vec<i64> = Outgoing::from(response(1))
            .into_iter()
            .map(|r| r.watch_id)
            .collect();
        assert_eq!(one, [1]);
        let many = Outgoing::from(vec![response(1), response(2), response(3)]);
        assert_eq!(
            many.into_iter().map(|r| r.watch_id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(matches!(Outgoing::from(vec![response(4)]), Outgoing::One(_)));
    }
}
