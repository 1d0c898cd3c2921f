//! Server streams of Concord's own services that answer with every item ready at once (up to a
//! bound) instead of one response per item, as etcd's watch does per revision.

use futures::{Stream, StreamExt};
use tonic::Status;

/// `items` as responses of at most `max` items each, made by `respond` (never called with none).
/// An error is answered after the items ready before it; items ready after it in the same turn
/// are dropped (the streams batched here end at their first error).
pub fn batched<T, R>(
    items: impl Stream<Item = Result<T, Status>> + Send + 'static,
    max: usize,
    respond: impl Fn(Vec<T>) -> R + Send + 'static,
) -> impl Stream<Item = Result<R, Status>> + Send + 'static
where
    T: Send + 'static,
    R: Send + 'static,
{
    items.ready_chunks(max).flat_map(move |chunk| {
        let mut out = Vec::new();
        let mut ready = Vec::new();
        for item in chunk {
            match item {
                Ok(item) => ready.push(item),
                Err(status) => {
                    out.push(Err(status));
                    break;
                }
            }
        }
        if !ready.is_empty() {
            out.insert(0, Ok(respond(ready)));
        }
        futures::stream::iter(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_items_share_a_response_and_an_error_comes_after_them_and_ends_it() {
        let items = futures::stream::iter([Ok(1), Ok(2), Err(Status::aborted("x")), Ok(3)]);
        let answers: Vec<_> = batched(items, 2, |items: Vec<i32>| items).collect().await;
        let shown: Vec<String> = answers
            .iter()
            .map(|a| match a {
                Ok(items) => format!("{items:?}"),
                Err(status) => status.message().to_string(),
            })
            .collect();
        assert_eq!(shown, ["[1, 2]", "x"]);
    }
}
