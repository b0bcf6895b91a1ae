// typescript-eslint's type-checked rules; formatting is Prettier's job.
import js from '@eslint/js'
import tseslint from 'typescript-eslint'

export default tseslint.config(
  {
    ignores: [
      'node_modules/',
      '.tap/',
      'coverage/',
      'dist/',
      'test/fixtures/',
      'scripts/',
      'eslint.config.js',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_' },
      ],
    },
  },
  {
    // tap's t.test() returns a promise that tap itself tracks; subtests need not await anything.
    files: ['**/*.test.ts'],
    rules: {
      '@typescript-eslint/no-floating-promises': 'off',
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    // Daemons meet only through lib/: no daemon imports another (DESIGN.md).
    files: ['lib/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            '**/frontend/**',
            '**/master/**',
            '**/client/**',
            '**/worker/**',
            '**/hooks/**',
            '**/bin/**',
          ],
        },
      ],
    },
  },
)
