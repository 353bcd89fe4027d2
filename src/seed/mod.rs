//! A deterministic synthetic catalog, for demos, tests and load tests.
//!
//! The same [`SeedSpec`] always produces the same rows (names, prices, attributes,
//! memberships): a ChaCha stream seeded from `seed` drives every choice. Category
//! sizes are skewed the way real catalogs are: each product joins one to three
//! categories drawn from a Zipf distribution over a shuffled category order, so a few
//! categories hold tens of thousands of products and most hold a few hundred.
//!
//! Rows go in with `COPY ... FROM STDIN` in one transaction, so a million products
//! load in seconds and a failure leaves the database as it was.

pub mod zipf;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::PgPool;

use zipf::Zipf;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedSpec {
    /// Number of products, with ids `1..=products`.
    pub products: u64,
    /// Number of categories (at least one).
    pub categories: u32,
    /// The seed of every random choice.
    pub seed: u64,
    /// Replace an existing catalog instead of refusing to touch it.
    pub replace: bool,
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    /// Products inserted.
    pub products: u64,
    /// Categories inserted.
    pub categories: u64,
    /// Product-category memberships inserted.
    pub memberships: u64,
    /// Wall time of the whole load.
    pub elapsed: Duration,
}

/// Why seeding failed; nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The catalog already has products and `replace` was not asked for.
    #[error("the catalog already holds {0} products; pass --replace to overwrite it")]
    NotEmpty(i64),
    /// The database refused a statement.
    #[error("database error while seeding: {0}")]
    Database(#[from] sqlx::Error),
}

/// Bytes buffered before a `COPY` chunk is sent: large enough to amortise round trips,
/// small enough to keep the generator's memory flat.
const COPY_CHUNK: usize = 1 << 20;

/// Zipf exponent of category popularity; 1.1 gives the long tail real catalogs show.
const CATEGORY_SKEW: f64 = 1.1;

/// Writes the catalog described by `spec` into the (migrated) database behind `pool`.
pub async fn seed(pool: &PgPool, spec: SeedSpec) -> Result<SeedReport, SeedError> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    sqlx::query("lock table products, categories, product_categories in exclusive mode")
        .execute(&mut *tx)
        .await?;
    let existing: i64 = sqlx::query_scalar("select count(*) from products")
        .fetch_one(&mut *tx)
        .await?;
    if existing > 0 && !spec.replace {
        return Err(SeedError::NotEmpty(existing));
    }
    sqlx::query("truncate product_categories, products, categories, outbox restart identity")
        .execute(&mut *tx)
        .await?;

    let mut generator = Generator::new(spec);
    let categories = generator.categories();
    let mut buf = Vec::with_capacity(COPY_CHUNK + 4096);

    let mut copy = tx
        .copy_in_raw("copy categories (id, slug, name, parent_id) from stdin")
        .await?;
    for (i, category) in categories.iter().enumerate() {
        let parent = category
            .parent
            .map_or_else(|| "\\N".to_owned(), |p| (p + 1).to_string());
        let _ = writeln!(
            TextRow(&mut buf),
            "{}\t{}\t{}\t{parent}",
            i + 1,
            category.slug,
            category.name
        );
    }
    copy.send(std::mem::take(&mut buf)).await?;
    copy.finish().await?;
    sqlx::query(
        "select setval(pg_get_serial_sequence('categories', 'id'), greatest(count(*), 1)) \
         from categories",
    )
    .fetch_one(&mut *tx)
    .await?;

    let mut memberships = Vec::new();
    let mut copy = tx
        .copy_in_raw(
            "copy products (id, sku, name, description, brand, price_amount, currency, stock, \
             attributes, images, active) from stdin",
        )
        .await?;
    for id in 1..=spec.products {
        generator.product(id, &mut buf);
        generator.memberships(id, &mut memberships);
        if buf.len() >= COPY_CHUNK {
            copy.send(std::mem::take(&mut buf)).await?;
            buf.reserve(COPY_CHUNK + 4096);
        }
    }
    copy.send(std::mem::take(&mut buf)).await?;
    copy.finish().await?;

    let mut copy = tx
        .copy_in_raw("copy product_categories (category_id, product_id) from stdin")
        .await?;
    for chunk in memberships.chunks(64 * 1024) {
        for (category, product) in chunk {
            let _ = writeln!(TextRow(&mut buf), "{category}\t{product}");
        }
        copy.send(std::mem::take(&mut buf)).await?;
    }
    copy.finish().await?;
    tx.commit().await?;
    // Fresh statistics, so the first listings after a seed use the keyset index.
    sqlx::query("analyze products, categories, product_categories")
        .execute(pool)
        .await?;

    Ok(SeedReport {
        products: spec.products,
        categories: categories.len() as u64,
        memberships: memberships.len() as u64,
        elapsed: started.elapsed(),
    })
}

/// Appends to a byte buffer through `fmt::Write`; every value written is generated
/// here and contains no tab, newline or backslash, so no COPY escaping is needed.
struct TextRow<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for TextRow<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// One generated category.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Category {
    slug: String,
    name: String,
    /// Index of the parent category, if this is a sub-category.
    parent: Option<usize>,
}

/// The deterministic source of every generated value.
struct Generator {
    rng: ChaCha8Rng,
    spec: SeedSpec,
    /// Category popularity by rank.
    popularity: Zipf,
    /// Category id (1-based) at each popularity rank.
    rank_to_category: Vec<i64>,
}

impl Generator {
    fn new(spec: SeedSpec) -> Self {
        let n = spec.categories.max(1) as usize;
        let popularity = Zipf::new(n, CATEGORY_SKEW);
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let mut rank_to_category: Vec<i64> = (1..=n as i64).collect();
        // Fisher-Yates, so the biggest categories are not simply the first ids.
        for i in (1..n).rev() {
            let j = rng.random_range(0..=i);
            rank_to_category.swap(i, j);
        }
        Self {
            rng,
            spec,
            popularity,
            rank_to_category,
        }
    }

    fn categories(&mut self) -> Vec<Category> {
        let n = self.spec.categories.max(1) as usize;
        let top = (n / 8).clamp(1, DEPARTMENTS.len());
        let mut used = std::collections::HashSet::new();
        (0..n)
            .map(|i| {
                let (name, parent) = if i < top {
                    (DEPARTMENTS[i].to_owned(), None)
                } else {
                    let adjective = pick(&mut self.rng, ADJECTIVES);
                    let noun = pick(&mut self.rng, NOUNS);
                    (format!("{adjective} {noun}"), Some(i % top))
                };
                let base = slugify(&name);
                let mut slug = base.clone();
                let mut suffix = 2;
                while !used.insert(slug.clone()) {
                    slug = format!("{base}-{suffix}");
                    suffix += 1;
                }
                Category { slug, name, parent }
            })
            .collect()
    }

    /// Appends product `id` as one COPY text row.
    fn product(&mut self, id: u64, buf: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let brand = pick(rng, BRANDS);
        let adjective = pick(rng, ADJECTIVES);
        let noun = pick(rng, NOUNS);
        let model = rng.random_range(100..1000);
        let series = pick(rng, SERIES);
        let color = pick(rng, COLORS);
        let material = pick(rng, MATERIALS);
        // Log-normal prices around 29.99, ending in .99 like shelf prices do.
        let price = (2999.0 * (normal(rng) * 0.9).exp()).clamp(99.0, 999_999.0) as i64;
        let price = price / 100 * 100 + 99;
        let currency = match rng.random_range(0..100) {
            0..60 => "USD",
            60..85 => "EUR",
            _ => "GBP",
        };
        let stock = if rng.random_bool(0.1) {
            0
        } else {
            rng.random_range(1..1000u32)
                .min(rng.random_range(1..1000u32))
        };
        let weight = rng.random_range(50..20_000);
        let warranty = if rng.random_bool(0.7) { 12 } else { 24 };
        let images = rng.random_range(1..=4);
        let active = !rng.random_bool(0.03);
        let code: String = noun.chars().take(3).collect::<String>().to_uppercase();

        let mut row = TextRow(buf);
        let _ = write!(
            row,
            "{id}\t{brand_code}-{code}-{id:07}\t{brand} {adjective} {noun} {series} {model}\t\
             The {brand} {noun} {series} {model} in {color}, made of {material}. \
             {pitch}\t{brand}\t{price}\t{currency}\t{stock}\t\
             {{\"color\": \"{color}\", \"material\": \"{material}\", \"weight_g\": {weight}, \
             \"warranty_months\": {warranty}}}\t[",
            brand_code = brand[..3].to_uppercase(),
            pitch = PITCHES[id as usize % PITCHES.len()],
        );
        for n in 1..=images {
            let sep = if n == 1 { "" } else { ", " };
            let _ = write!(row, "{sep}\"https://img.example.com/p/{id}/{n}.jpg\"");
        }
        let _ = writeln!(row, "]\t{}", if active { 't' } else { 'f' });
    }

    /// Pushes product `id`'s one to three distinct categories.
    fn memberships(&mut self, id: u64, out: &mut Vec<(i64, i64)>) {
        let n = self.popularity.len();
        let count = self.rng.random_range(1..=3usize).min(n);
        let first = out.len();
        while out.len() - first < count {
            let rank = self.popularity.sample(&mut self.rng);
            let category = self.rank_to_category[rank - 1];
            if !out[first..].iter().any(|&(c, _)| c == category) {
                out.push((category, id as i64));
            }
        }
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn slugify(name: &str) -> String {
    name.to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

const DEPARTMENTS: &[&str] = &[
    "Electronics",
    "Home & Living",
    "Kitchen",
    "Garden",
    "Sports & Outdoors",
    "Toys & Games",
    "Beauty",
    "Fashion",
    "Automotive",
    "Office",
    "Pet Supplies",
    "Health",
    "Music",
    "Tools & Hardware",
    "Baby",
    "Travel",
];

const BRANDS: &[&str] = &[
    "Northwind",
    "Acme",
    "Lumen",
    "Verdant",
    "Kestrel",
    "Halcyon",
    "Brightline",
    "Corvid",
    "Solace",
    "Tidewater",
    "Ironbark",
    "Meridian",
    "Quill",
    "Fable",
    "Orchard",
    "Summit",
    "Parallax",
    "Willow",
    "Cobalt",
    "Juniper",
    "Atlas",
    "Ember",
    "Nimbus",
    "Sable",
];

const ADJECTIVES: &[&str] = &[
    "Wireless",
    "Compact",
    "Ergonomic",
    "Portable",
    "Stainless",
    "Organic",
    "Smart",
    "Classic",
    "Ultralight",
    "Heavy-Duty",
    "Foldable",
    "Insulated",
    "Rechargeable",
    "Waterproof",
    "Modular",
    "Vintage",
    "Premium",
    "Everyday",
    "Cordless",
    "Adjustable",
];

const NOUNS: &[&str] = &[
    "Headphones",
    "Kettle",
    "Backpack",
    "Desk Lamp",
    "Blender",
    "Sneakers",
    "Tent",
    "Speaker",
    "Water Bottle",
    "Drill",
    "Notebook",
    "Chair",
    "Jacket",
    "Skillet",
    "Keyboard",
    "Monitor",
    "Yoga Mat",
    "Watch",
    "Sunglasses",
    "Toaster",
    "Camera",
    "Bicycle Light",
    "Pillow",
    "Planter",
];

const SERIES: &[&str] = &["One", "Pro", "Air", "Max", "Mini", "Plus", "Lite", "Studio"];

const COLORS: &[&str] = &[
    "black",
    "white",
    "slate grey",
    "navy",
    "forest green",
    "sand",
    "crimson",
    "sky blue",
];

const MATERIALS: &[&str] = &[
    "aluminium",
    "recycled plastic",
    "oak",
    "steel",
    "cotton",
    "leather",
    "bamboo",
    "glass",
];

const PITCHES: &[&str] = &[
    "Built to last, with a two-year guarantee.",
    "Designed for everyday use at home or on the road.",
    "A customer favourite, rated 4.6 out of 5.",
    "Quiet, efficient and easy to clean.",
    "Ships in plastic-free packaging.",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> SeedSpec {
        SeedSpec {
            products: 200,
            categories: 40,
            seed,
            replace: false,
        }
    }

    fn generate(spec: SeedSpec) -> (Vec<Category>, Vec<u8>, Vec<(i64, i64)>) {
        let mut g = Generator::new(spec);
        let categories = g.categories();
        let (mut rows, mut members) = (Vec::new(), Vec::new());
        for id in 1..=spec.products {
            g.product(id, &mut rows);
            g.memberships(id, &mut members);
        }
        (categories, rows, members)
    }

    #[test]
    fn the_same_seed_generates_the_same_catalog() {
        assert_eq!(generate(spec(7)), generate(spec(7)));
        assert_ne!(generate(spec(7)).1, generate(spec(8)).1);
    }

    #[test]
    fn slugs_are_unique_and_well_formed() {
        let (categories, _, _) = generate(SeedSpec {
            categories: 2000,
            ..spec(1)
        });
        let slugs: std::collections::HashSet<_> = categories.iter().map(|c| &c.slug).collect();
        assert_eq!(slugs.len(), 2000);
        assert!(slugs.iter().all(|s| {
            !s.is_empty()
                && s.split('-')
                    .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric()))
        }));
    }

    #[test]
    fn every_row_has_eleven_fields_and_valid_json() {
        let (_, rows, _) = generate(spec(3));
        let text = String::from_utf8(rows).unwrap();
        assert_eq!(text.lines().count(), 200);
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 11, "{line}");
            let attributes: serde_json::Value = serde_json::from_str(fields[8]).unwrap();
            assert!(attributes.is_object());
            let images: serde_json::Value = serde_json::from_str(fields[9]).unwrap();
            assert!(images.is_array());
            assert!(fields[5].parse::<i64>().unwrap() >= 99);
        }
    }

    #[test]
    fn memberships_are_distinct_and_skewed() {
        let (_, _, members) = generate(SeedSpec {
            products: 5000,
            ..spec(11)
        });
        let mut sizes = std::collections::HashMap::new();
        for &(c, _) in &members {
            *sizes.entry(c).or_insert(0usize) += 1;
        }
        let mut sizes: Vec<usize> = sizes.into_values().collect();
        sizes.sort_unstable();
        let (smallest, largest) = (sizes[0], sizes[sizes.len() - 1]);
        assert!(largest > 10 * smallest, "not skewed: {smallest}..{largest}");
        let mut pairs = members.clone();
        pairs.sort_unstable();
        pairs.dedup();
        assert_eq!(pairs.len(), members.len());
    }
}
