//! The PII pack.

use crate::{Finding, Input, Pack};

/// Optional PII types.
#[derive(Debug, Clone, Default)]
pub struct PiiOptions {}

/// Personal data with validators.
#[derive(Debug, Default)]
pub struct PiiPack {}

impl PiiPack {
    pub fn new(_opts: &PiiOptions) -> PiiPack {
        PiiPack {}
    }
}

impl Pack for PiiPack {
    fn name(&self) -> &'static str {
        "pii"
    }
    fn rules(&self) -> usize {
        0
    }
    fn triggers(&self) -> Vec<(String, usize)> {
        Vec::new()
    }
    fn scan(&self, _input: &Input<'_>, _enabled: &[bool], _out: &mut Vec<Finding>) {}
}
