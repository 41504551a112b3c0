//! A first-stage pass over many items (question features, scope documents) cut into parts on
//! host threads. On a GPU machine the model's share of a question is milliseconds, and reading
//! feature frequencies and passage vectors on one host thread was most of the rest
//! (docs/retrieval.md, "Latency"): 57-61 ms and 61-65 ms of a 156 ms question on the H200.

use super::error::Result;

/// Most host threads one pass of a question takes: a daemon answers several questions at once,
/// and past this the parts are too small to pay for their threads.
const MAX_PARTS: usize = 8;

/// Runs `work` over `items` cut into consecutive parts of at least `min_part` items, each part
/// on a scoped thread of its own (one part runs on the caller's thread), and returns the
/// parts' outputs joined in part order, or the first part's error.
pub fn in_parts<T, R, F>(items: &[T], min_part: usize, work: F) -> Result<Vec<R>>
where
    T: Sync,
    R: Send,
    F: Fn(&[T]) -> Result<Vec<R>> + Sync,
{
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parts = cores
        .min(MAX_PARTS)
        .min(items.len().div_ceil(min_part.max(1)))
        .max(1);
    if parts == 1 {
        return work(items);
    }
    let size = items.len().div_ceil(parts);
    std::thread::scope(|s| {
        let jobs: Vec<_> = items
            .chunks(size)
            .map(|part| s.spawn(|| work(part)))
            .collect();
        let mut out = Vec::new();
        let mut failed = None;
        for job in jobs {
            // A panic in a part is the caller's, as it was on one thread.
            match job.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                Ok(part) => out.extend(part),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieve::RetrieveError;

    #[test]
    fn parts_come_back_in_order_whatever_their_size() {
        let items: Vec<u32> = (0..1000).collect();
        for min_part in [1, 7, 100, 999, 1000, 5000] {
            let out = in_parts(&items, min_part, |part| {
                Ok(part.iter().map(|x| x * 2).collect())
            })
            .unwrap();
            assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
        let none: Vec<u32> = Vec::new();
        assert!(in_parts(&none, 4, |p| Ok(p.to_vec())).unwrap().is_empty());
    }

    #[test]
    fn a_failing_part_fails_the_pass() {
        let items: Vec<u32> = (0..64).collect();
        let out = in_parts(&items, 1, |part| {
            if part.contains(&40) {
                Err(RetrieveError::InvalidInput {
                    field: "item",
                    reason: "40".into(),
                })
            } else {
                Ok(part.to_vec())
            }
        });
        assert!(matches!(out, Err(RetrieveError::InvalidInput { .. })));
    }
}
