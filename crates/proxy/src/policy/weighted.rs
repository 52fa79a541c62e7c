//! Picking a backend of a rule by weight.

/// Picks an index with probability proportional to its weight, from a uniform `roll` in
/// `0..total`. Weight 0 is never picked; `None` when every weight is 0.
pub fn pick(weights: &[u32], roll: u64) -> Option<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut roll = roll % total;
    for (i, w) in weights.iter().enumerate() {
        let w = u64::from(*w);
        if roll < w {
            return Some(i);
        }
        roll -= w;
    }
    None
}

/// The sum of the weights, the range of a roll.
pub fn total(weights: &[u32]) -> u64 {
    weights.iter().map(|w| u64::from(*w)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolls_map_onto_weights() {
        let w = [90, 10];
        assert_eq!(pick(&w, 0), Some(0));
        assert_eq!(pick(&w, 89), Some(0));
        assert_eq!(pick(&w, 90), Some(1));
        assert_eq!(pick(&w, 99), Some(1));
        assert_eq!(pick(&[0, 5, 0], 3), Some(1), "zero weights are skipped");
        assert_eq!(pick(&[0, 0], 3), None, "all zero: nothing");
        assert_eq!(pick(&[], 3), None);
    }

    #[test]
    fn every_roll_lands_in_proportion() {
        let w = [3, 0, 7];
        let mut counts = [0; 3];
        for roll in 0..total(&w) * 100 {
            counts[pick(&w, roll).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 0, 700]);
    }
}
