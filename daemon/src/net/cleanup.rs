//! Start-up cleanup of interfaces left by a daemon that did not exit cleanly.

use super::{NetError, Netlink, TAP_PREFIX};

/// Deletes every link named with summond's prefix; returns their names.
pub async fn remove_leftovers(nl: &Netlink) -> Result<Vec<String>, NetError> {
    let mut removed = Vec::new();
    for (index, name) in nl.links_with_prefix(TAP_PREFIX).await? {
        nl.delete_link(index).await?;
        removed.push(name);
    }
    Ok(removed)
}
