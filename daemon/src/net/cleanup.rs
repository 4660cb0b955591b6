//! Clean-up of the interfaces a summond on the same host state left behind (a daemon that did
//! not exit cleanly), and of our own at exit. Only links carrying our mark are touched: an
//! operator's own `sm-*` interface, or another daemon's, is never deleted.

use super::{NetError, Netlink, TAP_GROUP, TAP_PREFIX};

/// Deletes every link named with summond's prefix and marked `mark`; returns their names. When
/// every link of summond's group carries the mark they go in one batch, else one by one.
pub async fn remove_leftovers(nl: &Netlink, mark: &str) -> Result<Vec<String>, NetError> {
    let marked = nl.marked_links(TAP_PREFIX, mark).await?;
    let removed = marked.iter().map(|(_, name)| name.clone()).collect();
    if marked.is_empty() {
        return Ok(removed);
    }
    // Links of a daemon that did not set the group are left after the batch; one by one.
    let rest = if nl.delete_group_if_marked(TAP_GROUP, mark).await? {
        nl.marked_links(TAP_PREFIX, mark).await?
    } else {
        marked
    };
    for (index, _) in rest {
        nl.delete_link(index).await?;
    }
    Ok(removed)
}
