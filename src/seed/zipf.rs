//! Zipf popularity over ranks `1..=n` (rank `r` weighs `1/r^s`), sampled by inverse
//! transform over the cumulative weights: one binary search per draw.
//!
//! One sampler for everything that needs skew: the demo catalog's category sizes
//! ([`super`]), the goose load test's product ids, and `bench/zipf.rs`, which writes
//! the ids `bench/compare.sh` requests and the hit ratio an oracle cache would reach.

use rand::RngExt;

/// A Zipf distribution over ranks `1..=n`.
#[derive(Debug, Clone, PartialEq)]
pub struct Zipf {
    /// Cumulative weight of ranks `1..=i+1` at index `i`.
    cumulative: Vec<f64>,
}

impl Zipf {
    /// The distribution over `1..=n` (at least one rank) with exponent `exponent`.
    pub fn new(n: usize, exponent: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n.max(1))
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect();
        Self { cumulative }
    }

    /// The number of ranks.
    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    /// Always false: a distribution has at least one rank.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// A rank drawn from `rng`.
    pub fn sample<R: RngExt + ?Sized>(&self, rng: &mut R) -> usize {
        let total = self.cumulative[self.len() - 1];
        let x = rng.random_range(0.0..total);
        self.cumulative
            .partition_point(|&c| c <= x)
            .min(self.len() - 1)
            + 1
    }

    /// The share of draws that land on the `k` most popular ranks: the hit ratio of
    /// a cache that holds exactly those (an oracle, the best any policy can do).
    pub fn top_share(&self, k: usize) -> f64 {
        if k == 0 {
            return 0.0;
        }
        let k = k.min(self.len());
        self.cumulative[k - 1] / self.cumulative[self.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn ranks_are_skewed_and_cover_the_range() {
        let zipf = Zipf::new(1000, 1.0);
        assert_eq!(zipf.len(), 1000);
        // Rank 1 carries about 1/H(1000) ≈ 13% of the mass.
        let first = zipf.top_share(1);
        assert!((0.12..0.15).contains(&first), "{first}");
        assert_eq!(zipf.top_share(1000), 1.0);
        assert_eq!(zipf.top_share(5000), 1.0);
        assert_eq!(zipf.top_share(0), 0.0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let draws: Vec<usize> = (0..20_000).map(|_| zipf.sample(&mut rng)).collect();
        assert!(draws.iter().all(|r| (1..=1000).contains(r)));
        let ones = draws.iter().filter(|&&r| r == 1).count() as f64 / draws.len() as f64;
        assert!((first - 0.02..first + 0.02).contains(&ones), "{ones}");
        assert!(draws.iter().any(|&r| r > 500));
    }

    #[test]
    fn one_rank_is_always_drawn() {
        let zipf = Zipf::new(0, 1.1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        assert_eq!(zipf.sample(&mut rng), 1);
        assert!(!zipf.is_empty());
    }
}
