//! Spare taps: the taps of the services stopped most recently, kept for their next start.
//!
//! Creating a tap is most of a cold start's plumbing (the kernel registers a net device: about
//! 0.35 ms here, against 0.02 ms to attach to one that exists), and a service that went idle is
//! the one most likely to be summoned again. So a stopped KVM instance's tap is set down, which
//! drops its queue, route and neighbour entry, and kept, detached, under its service's name; the
//! next start of that service attaches to it and sets it up as a new one (link up, route,
//! neighbour entry). Nothing of the old instance is left in it: no address, no route, no queued
//! frame, and the guest that gets it is of the same service. At most `network.spare_taps` are
//! kept, the oldest deleted first; at exit they go with the other taps, in one batch.

use std::collections::{BTreeMap, HashMap};

/// The spares, by tap name, oldest first.
#[derive(Debug, Default)]
pub(super) struct Spares {
    limit: usize,
    by_name: HashMap<String, (u32, u64)>,
    by_age: BTreeMap<u64, String>,
    next: u64,
}

impl Spares {
    pub fn new(limit: usize) -> Spares {
        Spares {
            limit,
            ..Spares::default()
        }
    }

    /// The spare tap named `name`: its link index.
    pub fn take(&mut self, name: &str) -> Option<u32> {
        let (index, age) = self.by_name.remove(name)?;
        self.by_age.remove(&age);
        Some(index)
    }

    /// Keeps link `index` as `name`'s spare if there is room; returns the links to delete (the
    /// oldest spares beyond the limit, or `index` itself when none are kept).
    pub fn put(&mut self, name: &str, index: u32) -> Vec<u32> {
        if self.limit == 0 {
            return vec![index];
        }
        let mut evicted: Vec<u32> = self
            .take(name)
            .into_iter()
            .filter(|&i| i != index)
            .collect();
        self.next += 1;
        self.by_name.insert(name.to_string(), (index, self.next));
        self.by_age.insert(self.next, name.to_string());
        while self.by_name.len() > self.limit {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some((i, _)) = self.by_name.remove(&oldest) {
                evicted.push(i);
            }
        }
        evicted
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Keeps no more from now on; returns the links of those kept so far.
    pub fn close(&mut self) -> Vec<u32> {
        self.limit = 0;
        self.by_age.clear();
        self.by_name.drain().map(|(_, (index, _))| index).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_spares_go_first_and_none_are_kept_with_a_limit_of_zero() {
        let mut s = Spares::new(2);
        assert!(s.put("sm-a", 1).is_empty());
        assert!(s.put("sm-b", 2).is_empty());
        // A third pushes out the oldest.
        assert_eq!(s.put("sm-c", 3), vec![1]);
        assert_eq!(s.take("sm-a"), None);
        assert_eq!(s.take("sm-b"), Some(2));
        assert_eq!(s.take("sm-b"), None);
        // The same name again replaces its older spare.
        assert!(s.put("sm-d", 4).is_empty());
        assert_eq!(s.put("sm-d", 5), vec![4]);
        assert_eq!(s.len(), 2);
        // The same link put twice is kept, not deleted under itself.
        assert!(s.put("sm-d", 5).is_empty());
        assert_eq!(s.take("sm-d"), Some(5));
        let mut none = Spares::new(0);
        assert_eq!(none.put("sm-a", 7), vec![7]);
        assert_eq!(none.len(), 0);
    }
}
