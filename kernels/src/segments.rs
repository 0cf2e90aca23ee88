//! The segment map: which rows of a batch take which adapter, built once per step.

use std::fmt::Debug;

use crate::error::{KernelError, Result};

/// Where an adapter lives and how strongly it applies, as the adapter cache reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdapterSlot {
    /// Index into the per-projection [`crate::AdapterTable`] (or slice of weights).
    pub slot: u32,
    /// LoRA rank `r` of the adapter.
    pub rank: u32,
    /// Multiplier of the delta, usually `lora_alpha / r`.
    pub scale: f32,
}

/// A run of segment tokens processed together by the CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tile {
    pub segment: u32,
    /// First sorted position of the tile.
    pub start: u32,
    /// One past the last sorted position of the tile.
    pub end: u32,
}

/// Tokens per CPU tile: enough to reuse each weight row from L1 across tokens, small enough
/// that a single-request prefill still splits across threads.
pub(crate) const CPU_TILE_TOKENS: usize = 16;

/// A batch of `num_rows` token rows grouped by adapter into segments.
///
/// Sorted position `p` (0 <= p < [`SegmentMap::num_tokens`]) refers to batch row `rows()[p]`;
/// segment `s` covers sorted positions `starts()[s]..starts()[s + 1]` and applies the adapter
/// in slot `slots()[s]` with rank `ranks()[s]` and scale `scales()[s]`. Rows that belong to no
/// segment (requests served by the base model alone) are left untouched by the kernels. The
/// batch itself need not be reordered: kernels read and write rows through `rows()`.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentMap {
    num_rows: usize,
    rows: Vec<u32>,
    starts: Vec<u32>,
    slots: Vec<u32>,
    ranks: Vec<u32>,
    scales: Vec<f32>,
    max_rank: usize,
    tiles: Vec<Tile>,
}

impl SegmentMap {
    /// Builds the map of a batch whose request `i` occupies the next `tokens_per_request[i]`
    /// rows and uses adapter `adapters[i]` (`None`: base model only).
    ///
    /// Requests that share an adapter become one segment; segments follow the order of the
    /// adapter keys, and within a segment rows keep the batch order. `resolve` maps an
    /// adapter key to its slot, rank and scale; it is called once per distinct adapter.
    pub fn new<K, F>(
        adapters: &[Option<K>],
        tokens_per_request: &[usize],
        mut resolve: F,
    ) -> Result<Self>
    where
        K: Ord + Copy + Debug,
        F: FnMut(K) -> Option<AdapterSlot>,
    {
        if adapters.len() != tokens_per_request.len() {
            return Err(KernelError::RequestCountMismatch {
                adapters: adapters.len(),
                tokens: tokens_per_request.len(),
            });
        }
        let mut offsets = Vec::with_capacity(adapters.len());
        let mut num_rows = 0usize;
        for &n in tokens_per_request {
            offsets.push(num_rows);
            num_rows += n;
        }
        let mut order: Vec<usize> =
            (0..adapters.len()).filter(|&i| adapters[i].is_some()).collect();
        // Stable: requests of one adapter keep their batch order.
        order.sort_by_key(|&i| adapters[i]);

        let mut rows = Vec::new();
        let mut starts = vec![0u32];
        let (mut slots, mut ranks, mut scales) = (Vec::new(), Vec::new(), Vec::new());
        let mut current: Option<K> = None;
        for &i in &order {
            let Some(key) = adapters[i] else { continue };
            if current != Some(key) {
                if current.is_some() {
                    starts.push(rows.len() as u32);
                }
                let slot = resolve(key).ok_or_else(|| KernelError::UnknownAdapter {
                    adapter: format!("{key:?}"),
                    request: i,
                })?;
                slots.push(slot.slot);
                ranks.push(slot.rank);
                scales.push(slot.scale);
                current = Some(key);
            }
            rows.extend((offsets[i]..offsets[i] + tokens_per_request[i]).map(|r| r as u32));
        }
        if current.is_some() {
            starts.push(rows.len() as u32);
        }
        Self::from_parts(num_rows, rows, starts, slots, ranks, scales)
    }

    /// Builds a map from its parts, checking them: `starts` has one entry more than there are
    /// segments, runs from 0 to `rows.len()` without decreasing (equal neighbours make empty
    /// segments), every row is below `num_rows` and appears at most once, ranks are >= 1.
    pub fn from_parts(
        num_rows: usize,
        rows: Vec<u32>,
        starts: Vec<u32>,
        slots: Vec<u32>,
        ranks: Vec<u32>,
        scales: Vec<f32>,
    ) -> Result<Self> {
        let bad_starts = starts.first() != Some(&0)
            || starts.last().map(|&e| e as usize) != Some(rows.len())
            || starts.windows(2).any(|w| w[0] > w[1]);
        if bad_starts {
            return Err(KernelError::BadSegmentStarts { starts, tokens: rows.len() });
        }
        let segments = starts.len() - 1;
        for (what, actual) in
            [("slots", slots.len()), ("ranks", ranks.len()), ("scales", scales.len())]
        {
            if actual != segments {
                return Err(KernelError::SegmentArrayLength { what, actual, segments });
            }
        }
        if let Some(s) = ranks.iter().position(|&r| r == 0) {
            return Err(KernelError::ZeroRank { slot: slots[s] });
        }
        let mut seen = vec![false; num_rows];
        for &row in &rows {
            let Some(flag) = seen.get_mut(row as usize) else {
                return Err(KernelError::RowOutOfRange { row, rows: num_rows });
            };
            if *flag {
                return Err(KernelError::DuplicateRow { row });
            }
            *flag = true;
        }
        let max_rank = ranks.iter().copied().max().unwrap_or(0) as usize;
        let mut tiles = Vec::new();
        for (s, w) in starts.windows(2).enumerate() {
            let mut p = w[0];
            while p < w[1] {
                let end = w[1].min(p + CPU_TILE_TOKENS as u32);
                tiles.push(Tile { segment: s as u32, start: p, end });
                p = end;
            }
        }
        Ok(Self { num_rows, rows, starts, slots, ranks, scales, max_rank, tiles })
    }

    /// Rows of the batch (the first dimension of x and y).
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// Rows that take an adapter: the length of the sorted order.
    pub fn num_tokens(&self) -> usize {
        self.rows.len()
    }

    /// Number of segments (distinct adapters in the batch, empty segments included).
    pub fn num_segments(&self) -> usize {
        self.slots.len()
    }

    /// The largest rank of the batch: the width of the shrink output.
    pub fn max_rank(&self) -> usize {
        self.max_rank
    }

    /// Batch row of each sorted position.
    pub fn rows(&self) -> &[u32] {
        &self.rows
    }

    /// Segment boundaries in sorted positions (`num_segments() + 1` entries).
    pub fn starts(&self) -> &[u32] {
        &self.starts
    }

    /// Adapter slot of each segment.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// Rank of each segment.
    pub fn ranks(&self) -> &[u32] {
        &self.ranks
    }

    /// Scale of each segment.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Sorted positions of segment `s`.
    pub fn segment_range(&self, s: usize) -> std::ops::Range<usize> {
        self.starts[s] as usize..self.starts[s + 1] as usize
    }

    pub(crate) fn tiles(&self) -> &[Tile] {
        &self.tiles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(k: u32) -> Option<AdapterSlot> {
        (k < 100).then_some(AdapterSlot { slot: k * 10, rank: 8 + k, scale: k as f32 })
    }

    #[test]
    fn groups_requests_by_adapter_keeping_batch_order() {
        // Requests: a(2 tokens) none(1) b(3) a(1) b(0)
        let map = SegmentMap::new(
            &[Some(2u32), None, Some(1), Some(2), Some(1)],
            &[2, 1, 3, 1, 0],
            resolve,
        )
        .unwrap();
        assert_eq!(map.num_rows(), 7);
        // Adapter 1: rows 3,4,5; adapter 2: rows 0,1 then 6. Row 2 has no adapter.
        assert_eq!(map.rows(), &[3, 4, 5, 0, 1, 6]);
        assert_eq!(map.starts(), &[0, 3, 6]);
        assert_eq!(map.slots(), &[10, 20]);
        assert_eq!(map.ranks(), &[9, 10]);
        assert_eq!(map.max_rank(), 10);
    }

    #[test]
    fn rejects_unknown_adapter_and_length_mismatch() {
        let err = SegmentMap::new(&[Some(1u32), Some(500)], &[1, 1], resolve).unwrap_err();
        assert!(err.to_string().contains("adapter 500 of request 1"), "{err}");
        let err = SegmentMap::new(&[Some(1u32)], &[1, 1], resolve).unwrap_err();
        assert!(matches!(err, KernelError::RequestCountMismatch { adapters: 1, tokens: 2 }));
    }

    #[test]
    fn from_parts_checks_invariants() {
        let ok = SegmentMap::from_parts(
            4,
            vec![3, 1],
            vec![0, 0, 2],
            vec![0, 1],
            vec![8, 16],
            vec![1.0, 2.0],
        );
        assert_eq!(ok.unwrap().segment_range(0), 0..0);
        let dup = SegmentMap::from_parts(4, vec![1, 1], vec![0, 2], vec![0], vec![8], vec![1.0]);
        assert!(matches!(dup, Err(KernelError::DuplicateRow { row: 1 })));
        let oob = SegmentMap::from_parts(2, vec![2], vec![0, 1], vec![0], vec![8], vec![1.0]);
        assert!(matches!(oob, Err(KernelError::RowOutOfRange { row: 2, rows: 2 })));
        let starts = SegmentMap::from_parts(
            4,
            vec![0, 1],
            vec![0, 2, 1],
            vec![0, 1],
            vec![8, 8],
            vec![1.0, 1.0],
        );
        assert!(matches!(starts, Err(KernelError::BadSegmentStarts { .. })));
        let len = SegmentMap::from_parts(4, vec![0], vec![0, 1], vec![0, 1], vec![8], vec![1.0]);
        assert!(matches!(len, Err(KernelError::SegmentArrayLength { what: "slots", .. })));
        let zero = SegmentMap::from_parts(4, vec![0], vec![0, 1], vec![3], vec![0], vec![1.0]);
        assert!(matches!(zero, Err(KernelError::ZeroRank { slot: 3 })));
    }

    #[test]
    fn tiles_cover_every_token_once() {
        let map = SegmentMap::from_parts(
            40,
            (0..40).rev().collect(),
            vec![0, 1, 1, 35, 40],
            vec![0, 1, 2, 3],
            vec![8; 4],
            vec![1.0; 4],
        )
        .unwrap();
        let mut covered = [0; 40];
        for t in map.tiles() {
            assert!(t.end - t.start <= CPU_TILE_TOKENS as u32 && t.start < t.end);
            assert!(map.segment_range(t.segment as usize).contains(&(t.start as usize)));
            for p in t.start..t.end {
                covered[p as usize] += 1;
            }
        }
        assert!(covered.iter().all(|&c| c == 1));
    }
}
