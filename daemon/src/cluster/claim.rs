//! Ownership by transaction: claim a service only if nobody owns it, announce it running,
//! release it, all conditional on the key being (or becoming) bound to our lease.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::cache::Owner;
use super::keys::OwnerValue;
use super::{Cluster, ClusterError};

/// The outcome of a claim.
pub enum Claim {
    /// The key is ours (at this revision), in state "starting".
    Won(i64),
    /// Someone holds it (possibly ourselves under an older lease).
    Held(Owner),
}

impl Cluster {
    /// Creates `owner/<service>` bound to `lease` if the key does not exist: etcd's
    /// linearizable transaction makes this the single point where ownership is decided.
    pub(super) async fn claim(&self, service: &str, lease: i64) -> Result<Claim, ClusterError> {
        let key = self.keys.owner(service);
        let value = OwnerValue {
            node: self.cfg.node.clone(),
            running: false,
        }
        .encode();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .etcd(|mut c| {
                let t = txn.clone();
                async move { c.txn(t).await }
            })
            .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok(Claim::Won(rev));
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    if let Some(v) = OwnerValue::parse(kv.value()) {
                        return Ok(Claim::Held(Owner {
                            node: v.node.into(),
                            running: v.running,
                            lease: kv.lease(),
                            rev: kv.mod_revision(),
                        }));
                    }
                }
            }
        }
        // Deleted between the compare and the get cannot happen inside one transaction; a
        // value we cannot read is someone else's claim all the same.
        Err(ClusterError::BadValue(self.keys.owner(service)))
    }

    /// Marks our claim running (the address is announced); false when the key is no longer
    /// bound to `lease`. Returns the new revision.
    pub(super) async fn announce(
        &self,
        service: &str,
        lease: i64,
    ) -> Result<Option<i64>, ClusterError> {
        let key = self.keys.owner(service);
        let value = OwnerValue {
            node: self.cfg.node.clone(),
            running: true,
        }
        .encode();
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self
            .etcd(|mut c| {
                let t = txn.clone();
                async move { c.txn(t).await }
            })
            .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Deletes `owner/<service>` if it is bound to `lease`; false when it was not (any more).
    pub(super) async fn release(&self, service: &str, lease: i64) -> Result<bool, ClusterError> {
        let key = self.keys.owner(service);
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self
            .etcd(|mut c| {
                let t = txn.clone();
                async move { c.txn(t).await }
            })
            .await?;
        Ok(resp.succeeded())
    }
}
