//! What a base model id stands for: its weights and numeric format, set by governance or at
//! genesis.

use crate::{mock::*, Event};
use frame_support::{assert_noop, assert_ok, traits::BuildGenesisConfig};
use openledger_primitives::market::{BaseModelSpec, NumericFormat};

#[test]
fn governance_registers_what_a_base_model_id_stands_for() {
    build_and_execute(|| {
        let spec = BaseModelSpec { weights: [3; 32], format: NumericFormat::CudaBf16 };
        // Only root: a provider cannot redefine the model its rivals serve.
        assert_noop!(
            Compute::set_base_model(RuntimeOrigin::signed(ENDOWED[0]), 1, Some(spec)),
            sp_runtime::DispatchError::BadOrigin
        );
        assert_eq!(Compute::base_model(1), None);
        assert_ok!(Compute::set_base_model(RuntimeOrigin::root(), 1, Some(spec)));
        assert_eq!(Compute::base_model(1), Some(spec));
        assert_eq!(crate::BaseModels::<Test>::get(0), None);
        let replaced = BaseModelSpec { weights: [4; 32], format: NumericFormat::Host };
        assert_ok!(Compute::set_base_model(RuntimeOrigin::root(), 1, Some(replaced)));
        assert_eq!(Compute::base_model(1), Some(replaced));
        assert_ok!(Compute::set_base_model(RuntimeOrigin::root(), 1, None));
        assert_eq!(Compute::base_model(1), None);
        assert_eq!(
            compute_events(),
            vec![
                Event::BaseModelSet { base_model: 1, spec: Some(spec) },
                Event::BaseModelSet { base_model: 1, spec: Some(replaced) },
                Event::BaseModelSet { base_model: 1, spec: None },
            ]
        );
    });
}

#[test]
fn genesis_registers_base_models() {
    sp_io::TestExternalities::default().execute_with(|| {
        crate::GenesisConfig::<Test> {
            base_models: vec![(0, [1; 32], 0), (5, [2; 32], 1)],
            ..Default::default()
        }
        .build();
        assert_eq!(
            Compute::base_model(0),
            Some(BaseModelSpec { weights: [1; 32], format: NumericFormat::Host })
        );
        assert_eq!(
            Compute::base_model(5),
            Some(BaseModelSpec { weights: [2; 32], format: NumericFormat::CudaBf16 })
        );
        assert_eq!(Compute::base_model(1), None);
    });
}

#[test]
#[should_panic(expected = "unknown numeric format 9")]
fn genesis_refuses_an_unknown_numeric_format() {
    sp_io::TestExternalities::default().execute_with(|| {
        crate::GenesisConfig::<Test> { base_models: vec![(0, [1; 32], 9)], ..Default::default() }
            .build();
    });
}
