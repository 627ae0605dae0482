//! Merkle nodes as stored: level 0 is the leaf hash of the event at that position; level
//! L > 0 node i is slice L-1 of `merkle_nodes` in the row at position ((i + 1) << L) - 1.

use std::collections::HashMap;

use ledger::merkle::{self, NodeId};
use ledger::Hash;
use sqlx::Row;

use crate::error::StoreError;

/// The row holding a node.
pub(crate) fn node_row(id: NodeId) -> Option<u64> {
    // `checked_shl` only checks the shift amount, not lost bits: multiply instead.
    let width = 1u64.checked_shl(u32::from(id.level))?;
    let end = id.index.checked_add(1)?.checked_mul(width)?;
    end.checked_sub(1)
}

/// Fetch the given nodes with one query.
pub(crate) async fn fetch_nodes<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    ids: &[NodeId],
) -> Result<HashMap<NodeId, Hash>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let positions: Vec<i64> =
        ids.iter().filter_map(|&id| node_row(id)).filter_map(|p| i64::try_from(p).ok()).collect();
    let rows =
        sqlx::query("SELECT position, event_hash, merkle_nodes FROM ledger_events WHERE position = ANY($1)")
            .bind(&positions)
            .fetch_all(exec)
            .await?;
    let mut by_pos: HashMap<u64, (Vec<u8>, Vec<u8>)> = HashMap::with_capacity(rows.len());
    for r in rows {
        let p: i64 = r.try_get("position")?;
        by_pos.insert(p as u64, (r.try_get("event_hash")?, r.try_get("merkle_nodes")?));
    }
    let mut out = HashMap::with_capacity(ids.len());
    for &id in ids {
        let Some(pos) = node_row(id) else { continue };
        let Some((event_hash, nodes)) = by_pos.get(&pos) else { continue };
        let hash = if id.level == 0 {
            Some(merkle::leaf_hash(event_hash))
        } else {
            let at = (usize::from(id.level) - 1) * 32;
            nodes.get(at..at + 32).and_then(|s| <Hash>::try_from(s).ok())
        };
        if let Some(h) = hash {
            out.insert(id, h);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_rows() {
        assert_eq!(node_row(NodeId { level: 0, index: 5 }), Some(5));
        assert_eq!(node_row(NodeId { level: 1, index: 0 }), Some(1));
        assert_eq!(node_row(NodeId { level: 2, index: 1 }), Some(7));
        assert_eq!(node_row(NodeId { level: 63, index: 2 }), None);
    }
}
