pub mod random_value;
