//! The prompt-injection pack.

use crate::{Finding, Input, Pack};

/// Instructions addressed to the model inside data.
#[derive(Debug, Default)]
pub struct InjectionPack {}

impl InjectionPack {
    pub fn new() -> InjectionPack {
        InjectionPack {}
    }
}

impl Pack for InjectionPack {
    fn name(&self) -> &'static str {
        "injection"
    }
    fn rules(&self) -> usize {
        0
    }
    fn triggers(&self) -> Vec<(String, usize)> {
        Vec::new()
    }
    fn scan(&self, _input: &Input<'_>, _enabled: &[bool], _out: &mut Vec<Finding>) {}
}
