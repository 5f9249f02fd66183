"""Work chains of aiida-voltnet: training (assemble, split, train, evaluate) and prediction."""
