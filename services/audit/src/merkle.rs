//! The Merkle tree of the audit log, as Certificate Transparency defines it
//! (RFC 9162 §2.1): leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 ||
//! left || right), inclusion and consistency proofs and their verification.
//!
//! [`Tree`] keeps the hash of every complete subtree, level by level, so that
//! appending is O(1) amortised and any root or proof for any earlier size
//! costs O(log² n) hashes, without touching the stored events.

use aws_lc_rs::digest::{Context, SHA256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    for part in parts {
        ctx.update(part);
    }
    let digest = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The hash of a leaf: SHA-256(0x00 || entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    sha256(&[&[0x00], entry])
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// The largest power of two strictly smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// A proof request that the tree cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The tree size asked for is larger than the tree.
    #[error("tree size {requested} is beyond the log's size {size}")]
    BeyondTree {
        /// Asked for.
        requested: u64,
        /// What the tree holds.
        size: u64,
    },
    /// The leaf index is not below the tree size.
    #[error("leaf {index} is not in a tree of size {size}")]
    LeafOutside {
        /// The leaf.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The first size of a consistency proof is larger than the second.
    #[error("consistency needs first size {first} ≤ second size {second}")]
    Order {
        /// First size.
        first: u64,
        /// Second size.
        second: u64,
    },
}

/// An append-only Merkle tree over leaf hashes.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// `levels[h][i]` is the hash of the complete subtree of 2^h leaves
    /// starting at leaf i·2^h.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut level = 0;
        let mut hash = leaf;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(hash);
            let len = self.levels[level].len();
            if len % 2 == 1 {
                break;
            }
            hash = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            level += 1;
        }
    }

    /// MTH(D[start:end]) for a range whose left part is always an aligned
    /// complete subtree (as every range of RFC 9162's recursion is).
    fn range_hash(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let k = split(n);
        node_hash(
            &self.range_hash(start, start + k),
            &self.range_hash(start + k, end),
        )
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size() {
            Err(ProofError::BeyondTree {
                requested: size,
                size: self.size(),
            })
        } else {
            Ok(())
        }
    }

    /// The root hash of the tree's first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        Ok(if size == 0 {
            empty_root()
        } else {
            self.range_hash(0, size)
        })
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves
    /// (RFC 9162 §2.1.3.1), leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::LeafOutside { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.range_hash(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.range_hash(start, start + k));
        }
    }

    /// The proof that the tree of `first` leaves is a prefix of the tree of
    /// `second` leaves (RFC 9162 §2.1.4.1).
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(second)?;
        if first > second {
            return Err(ProofError::Order { first, second });
        }
        let mut proof = Vec::new();
        if first > 0 && first < second {
            self.subproof(first, 0, second, true, &mut proof);
        }
        Ok(proof)
    }

    fn subproof(&self, m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !complete {
                out.push(self.range_hash(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, complete, out);
            out.push(self.range_hash(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.range_hash(start, start + k));
        }
    }
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Checks a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        // Every tree extends the empty one.
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((head, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && fr == *first_root && sr == *second_root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MTH straight from the RFC's recursive definition, as a reference.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn tree(n: u64) -> (Tree, Vec<Hash>) {
        let mut t = Tree::new();
        let leaves: Vec<Hash> = (0..n)
            .map(|i| leaf_hash(format!("event {i}").as_bytes()))
            .collect();
        for l in &leaves {
            t.push(*l);
        }
        (t, leaves)
    }

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hashes_follow_rfc_9162() {
        // Known values: SHA-256 of the empty string, and of a lone 0x00 byte
        // (the hash of an empty leaf).
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn roots_match_the_recursive_definition_for_every_size() {
        let (t, leaves) = tree(70);
        for n in 0..=70u64 {
            assert_eq!(
                t.root(n).unwrap(),
                reference_root(&leaves[..n as usize]),
                "size {n}"
            );
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_wrong_leaf_does_not() {
        let (t, leaves) = tree(37);
        for size in 1..=37u64 {
            let root = t.root(size).unwrap();
            for index in 0..size {
                let proof = t.inclusion_proof(index, size).unwrap();
                assert!(
                    verify_inclusion(index, size, &leaves[index as usize], &proof, &root),
                    "{index}/{size}"
                );
                let other = leaves[((index + 1) % 37) as usize];
                if size > 1 {
                    assert!(!verify_inclusion(index, size, &other, &proof, &root));
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_forked_history_does_not() {
        let (t, _) = tree(33);
        for second in 0..=33u64 {
            for first in 0..=second {
                let proof = t.consistency_proof(first, second).unwrap();
                let (r1, r2) = (t.root(first).unwrap(), t.root(second).unwrap());
                assert!(
                    verify_consistency(first, second, &r1, &r2, &proof),
                    "{first}->{second}"
                );
            }
        }
        // A log that rewrote leaf 3 cannot prove consistency with the original.
        let (mut forked, leaves) = (Tree::new(), tree(20).1);
        for (i, l) in leaves.iter().enumerate() {
            forked.push(if i == 3 { leaf_hash(b"rewritten") } else { *l });
        }
        let (honest, _) = tree(20);
        let proof = forked.consistency_proof(10, 20).unwrap();
        assert!(!verify_consistency(
            10,
            20,
            &honest.root(10).unwrap(),
            &forked.root(20).unwrap(),
            &proof
        ));
    }

    #[test]
    fn proofs_beyond_the_tree_are_refused() {
        let (t, _) = tree(5);
        assert_eq!(
            t.root(6),
            Err(ProofError::BeyondTree {
                requested: 6,
                size: 5
            })
        );
        assert_eq!(
            t.inclusion_proof(5, 5),
            Err(ProofError::LeafOutside { index: 5, size: 5 })
        );
        assert_eq!(
            t.consistency_proof(4, 3),
            Err(ProofError::Order {
                first: 4,
                second: 3
            })
        );
    }
}
