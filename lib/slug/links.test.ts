import t from 'tap'
import { resolveLink, type LinkVerdict } from './links.js'

// [name, links in the tree, the link to resolve, verdict]
const cases: Array<[string, Record<string, string>, string, LinkVerdict]> = [
  ['SIBLING', { 'bin/node': 'node-20' }, 'bin/node', 'inside'],
  ['UP ONE, STILL INSIDE', { 'a/link': '../b/file' }, 'a/link', 'inside'],
  ['TO THE ROOT ITSELF', { 'a/b/root': '../..' }, 'a/b/root', 'inside'],
  ['DOT AND SLASHES', { 'a/l': './/x/./y/' }, 'a/l', 'inside'],
  ['EMPTY TARGET', { l: '' }, 'l', 'inside'],
  ['DANGLING INSIDE', { 'a/l': 'missing/file' }, 'a/l', 'inside'],
  ['UP PAST THE ROOT', { 'a/l': '../../etc/passwd' }, 'a/l', 'outside'],
  ['UP FROM THE ROOT', { l: '..' }, 'l', 'outside'],
  ['ABSOLUTE', { 'etc/passwd': '/etc/passwd' }, 'etc/passwd', 'outside'],
  ['ABSOLUTE INTO SELF', { l: '/app/x' }, 'l', 'outside'],
  ['UP AND BACK DOWN', { 'a/l': '../../app/a/x' }, 'a/l', 'outside'],
  [
    'THROUGH A LINK TO THE ROOT',
    { 'a/b/c': '../..', x: 'a/b/c/..' }, // lexically "a/b", really the root's parent
    'x',
    'outside',
  ],
  ['THROUGH A DIR LINK', { d: 'a/b', x: 'd/../../..' }, 'x', 'outside'],
  ['THROUGH A DIR LINK, INSIDE', { d: 'a/b', x: 'd/../c' }, 'x', 'inside'],
  ['TO A LINK THAT ESCAPES', { a: 'b', b: '../x' }, 'a', 'outside'],
  ['TO AN ABSOLUTE LINK', { a: 'sub/b', 'sub/b': '/tmp' }, 'a', 'outside'],
  ['CHAIN INSIDE', { a: 'b', b: 'c/d', 'c/d': '../e' }, 'a', 'inside'],
  ['LOOP', { a: 'b', b: 'a' }, 'a', 'loop'],
  ['SELF LOOP', { a: 'a' }, 'a', 'loop'],
  ['LOOP THROUGH A DIR', { 'd/x': '../d/x' }, 'd/x', 'loop'],
]

t.test('symlink verdicts', async (t) => {
  for (const [name, tree, link, verdict] of cases) {
    t.equal(resolveLink(link, new Map(Object.entries(tree))), verdict, name)
  }
})

t.test('the link must be one of the links', async (t) => {
  t.throws(() => resolveLink('nope', new Map()), /not among the links/)
})
